"""One loop that serves a request schedule through any engine with add/step, and takes every timestamp the same way.

    serve(engine, requests, arrivals)       # engine: an adapter with add(i, prompt, n), step() -> {i: tokens so far},
                                            #         has_unfinished(); requests: [(prompt ids, output length)]

The clock is read after each step() returns: a token's time is the end of the step that produced it, for kvlib's
engine, vLLM's (`llm.llm_engine.add_request/step`) and the static batcher alike. Requests are added when the clock
passes their arrival time (all at 0 for offline throughput); an idle engine sleeps until the next arrival.

This file imports only the standard library at module level (torch and vLLM inside functions), because it is also
the script that runs inside vLLM's own virtual environment, where kvlib is not installed:

    VENV/bin/python engine_driver.py --model DIR [--enforce-eager] [--kv-cache-memory-bytes N] ...

reads one JSON command per line on stdin ({"cmd": "info"}, {"cmd": "serve", "requests": ..., "arrivals": ...},
{"cmd": "profile", ...}, {"cmd": "quit"}) and answers each with one JSON line on its own stdout; vLLM's logs go to
stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict


def serve(engine, requests: list[tuple[list[int], int]], arrivals: list[float] | None = None) -> dict:
    """Run `requests` through `engine`, request i added once `arrivals[i]` seconds have passed (default: all at 0).

    Returns per request: arrival, token times (seconds from the start) and tokens; per step: its end time and
    how many requests got a token in it. No request may get more tokens than asked."""
    arrivals = [0.0] * len(requests) if arrivals is None else list(arrivals)
    if len(arrivals) != len(requests) or any(b < a for a, b in zip(arrivals, arrivals[1:])):
        raise ValueError("arrivals must be one non-decreasing time per request")
    tokens: dict[int, list[int]] = {}
    times: dict[int, list[float]] = defaultdict(list)
    step_end, step_rows = [], []
    clock = time.perf_counter
    start, nxt = clock(), 0
    while nxt < len(requests) or engine.has_unfinished():
        now = clock() - start
        while nxt < len(requests) and arrivals[nxt] <= now:
            engine.add(nxt, *requests[nxt])
            nxt += 1
        if not engine.has_unfinished():
            time.sleep(max(0.0, arrivals[nxt] - (clock() - start)))
            continue
        out = engine.step()
        t = clock() - start
        step_end.append(t)
        step_rows.append(sum(len(ids) > len(tokens.get(i, ())) for i, ids in out.items()))
        for i, ids in out.items():
            new = len(ids) - len(times[i])
            if new > 0:
                times[i] += [t] * new
                tokens[i] = list(ids)
    for i, (_, n) in enumerate(requests):
        if len(tokens.get(i, ())) != n:
            raise RuntimeError(f"request {i} got {len(tokens.get(i, ()))} tokens, asked for {n}")
    return dict(elapsed_s=step_end[-1] if step_end else 0.0, arrivals=arrivals, step_end=step_end,
                step_rows=step_rows, tokens=[tokens[i] for i in range(len(requests))],
                token_times=[times[i] for i in range(len(requests))])


def profile_ops(fn) -> dict:
    """Run fn() under torch's profiler. Returns the wall time, the self time of every op by name (microseconds,
    with counts), and the time inside regions named "kvlib::<name>" that fn opens with torch.profiler's
    record_function (each region's op self times are also kept apart, under "<region>/<op>")."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        fn()
        wall = time.perf_counter() - t
    ops: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    regions: dict[str, float] = defaultdict(float)
    for e in prof.events():
        if e.name.startswith("kvlib::"):
            p = e.cpu_parent
            while p is not None and p.name != e.name:
                p = p.cpu_parent
            if p is None:  # a region inside one of the same name (a hook and the engine both mark it) counts once
                regions[e.name] += e.cpu_time_total
            continue
        region, p = None, e.cpu_parent
        while p is not None:  # the innermost kvlib:: region around this op, if any
            if p.name.startswith("kvlib::"):
                region = p.name
                break
            p = p.cpu_parent
        for key in (e.name, f"{region}/{e.name}") if region else (e.name,):
            ops[key][0] += 1
            ops[key][1] += e.self_cpu_time_total
    del torch
    return dict(wall_s=wall, ops={k: v for k, v in ops.items()}, regions=dict(regions))


class VLLMAdapter:
    """vLLM's LLMEngine behind serve(): greedy, exactly n tokens per request (no EOS), no detokenizing."""

    def __init__(self, llm) -> None:
        from vllm import SamplingParams

        self.engine, self.SamplingParams = llm.llm_engine, SamplingParams

    def add(self, i: int, prompt: list[int], n: int) -> None:
        params = self.SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n, ignore_eos=True, detokenize=False)
        self.engine.add_request(str(i), {"prompt_token_ids": list(prompt)}, params)

    def step(self) -> dict[int, list[int]]:
        return {int(o.request_id): list(o.outputs[0].token_ids) for o in self.engine.step()}

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished_requests()


def _vllm_info(llm, args) -> dict:
    import platform

    import torch
    import transformers
    import vllm

    cfg = llm.llm_engine.vllm_config
    return dict(vllm=vllm.__version__, torch=torch.__version__, transformers=transformers.__version__,
                python=platform.python_version(), torch_threads=torch.get_num_threads(),
                omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                cpu_omp_threads_bind=os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"),
                enforce_eager=args.enforce_eager, compilation_mode=str(cfg.compilation_config.mode),
                block_size=cfg.cache_config.block_size, num_gpu_blocks=cfg.cache_config.num_gpu_blocks,
                kv_cache_memory_bytes=cfg.cache_config.kv_cache_memory_bytes,
                max_num_seqs=cfg.scheduler_config.max_num_seqs,
                max_num_batched_tokens=cfg.scheduler_config.max_num_batched_tokens,
                enable_prefix_caching=cfg.cache_config.enable_prefix_caching,
                enable_chunked_prefill=cfg.scheduler_config.enable_chunked_prefill,
                startup_s=args.startup_s)


def profiled_serve(adapter, requests) -> dict:
    """serve() with each step inside a kvlib::step region (vLLM's forward is not hooked: its op names tell)."""
    from torch.profiler import record_function

    step = adapter.step

    def timed_step():
        with record_function("kvlib::step"):
            return step()

    adapter.step = timed_step
    try:
        result = {}
        prof = profile_ops(lambda: result.update(serve(adapter, requests)))
    finally:
        adapter.step = step
    return dict(profile=prof, steps=len(result["step_end"]), elapsed_s=result["elapsed_s"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="serve JSON commands through vLLM (run inside vLLM's venv)")
    p.add_argument("--model", required=True, help="a transformers checkpoint directory (model.to_hf().save_pretrained)")
    p.add_argument("--enforce-eager", action="store_true", help="no torch.compile (vLLM's eager mode)")
    p.add_argument("--kv-cache-memory-bytes", type=int, help="the KV budget (default: vLLM's)")
    p.add_argument("--block-size", type=int, help="tokens per block (default: vLLM's, 128 on CPU)")
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--max-num-batched-tokens", type=int)
    p.add_argument("--max-model-len", type=int, default=1024)
    args = p.parse_args(argv)
    reply = os.fdopen(os.dup(1), "w", buffering=1)  # answers go to the real stdout ...
    os.dup2(2, 1)  # ... and everything else printed to fd 1 (vLLM's logs, warnings) to stderr
    sys.stdout = sys.stderr
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: step() is one step
    from vllm import LLM

    kwargs = {k: v for k, v in (("kv_cache_memory_bytes", args.kv_cache_memory_bytes), ("block_size", args.block_size),
                                ("max_num_seqs", args.max_num_seqs),
                                ("max_num_batched_tokens", args.max_num_batched_tokens)) if v is not None}
    t = time.perf_counter()
    llm = LLM(model=args.model, skip_tokenizer_init=True, dtype="float32", max_model_len=args.max_model_len,
              enforce_eager=args.enforce_eager, seed=0, **kwargs)
    args.startup_s = time.perf_counter() - t
    adapter = VLLMAdapter(llm)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "info":
                answer = _vllm_info(llm, args)
            elif cmd["cmd"] == "serve":
                llm.reset_prefix_cache()  # every run starts from an empty prefix cache, as a fresh kvlib engine does
                answer = serve(adapter, [tuple(r) for r in cmd["requests"]], cmd.get("arrivals"))
            elif cmd["cmd"] == "profile":
                llm.reset_prefix_cache()
                answer = profiled_serve(adapter, [tuple(r) for r in cmd["requests"]])
            else:
                raise ValueError(f"unknown command {cmd['cmd']!r}")
        except Exception as err:  # report it to the bench instead of dying silently
            answer = {"error": f"{type(err).__name__}: {err}"}
        reply.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
