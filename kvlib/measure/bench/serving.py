"""`python -m kvlib.measure.bench serving`: throughput at a fixed KV memory budget, in one run on one set of weights.

The same requests (seeded random prompts, lengths drawn like the vLLM paper's Alpaca or ShareGPT workloads, each
with its own output length, no EOS) go through
- static batching with contiguous max-length reservation: the budget holds budget_tokens // max_len requests; each
  batch runs (kvlib.generate, static cache, left padding) until its longest request is done;
- continuous batching with paged blocks: kvlib's LLMEngine with budget_tokens // block_size blocks;
- transformers' own continuous batching (its ContinuousBatchingManager, what `generate_batch` drives), same weights,
  each request with its own max_new_tokens.
All three must give every request the same greedy tokens. Also: paged attention's gather vs contiguous attention.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ...model.batching import left_pad
from ...config import GPT2Config
from ...model.generation import generate
from ...model.loading import random_gpt2
from ...model.gpt2 import GPT2
from ...cache.paged.cache import PagedKVCache
from ..waste import sample_lengths
from ..figures import device_label
from ...serving import LLMEngine
from .runner import TINY


@dataclass
class ServingSettings:
    workload: str = "alpaca"
    num_requests: int = 16
    max_len: int = 1024  # contiguous reservation per request (GPT-2's n_positions)
    budget_tokens: int = 2048  # the KV budget, in token slots (x 73,728 B for GPT-2 small fp32)
    block_size: int = 16
    max_output: int = 256  # cap on a request's output length, to bound the run time
    seed: int = 0
    gather_batch: int = 16
    gather_context: int = 512
    repeats: int = 5  # gather-cost timing repeats
    hf: bool = True


QUICK_SERVING = dict(num_requests=6, max_len=128, budget_tokens=256, max_output=24, gather_batch=4,
                     gather_context=64, repeats=3)


def make_requests(s: ServingSettings, vocab_size: int) -> list[tuple[list[int], int]]:
    """(prompt token ids, output length) per request, seeded."""
    g = torch.Generator().manual_seed(s.seed)
    lengths = sample_lengths(s.workload, s.num_requests, max_len=s.max_len, seed=s.seed)
    return [(torch.randint(0, vocab_size, (p,), generator=g).tolist(), min(o, s.max_output)) for p, o in lengths]


def run_static(model: GPT2, requests, batch_size: int) -> dict:
    """Static batching: fixed groups in arrival order; a group runs until its longest request is done."""
    outputs, steps, rows = [], 0, 0
    start = time.perf_counter()
    for i in range(0, len(requests), batch_size):
        group = requests[i:i + batch_size]
        ids, mask = left_pad([p for p, _ in group], pad_token_id=0)
        n = max(o for _, o in group)
        out = generate(model, ids, n, cache="static", attention_mask=mask)[:, ids.shape[1]:]
        outputs += [out[r, :o].tolist() for r, (_, o) in enumerate(group)]
        steps += n
        rows += n * len(group)
    elapsed = time.perf_counter() - start
    tokens = sum(o for _, o in requests)
    return dict(time_s=elapsed, tokens=tokens, tokens_per_s=tokens / elapsed, steps=steps, batch_size=batch_size,
                mean_rows_per_step=rows / steps, useful_row_share=tokens / rows, outputs=outputs)


def run_continuous(model: GPT2, requests, num_blocks: int, block_size: int) -> dict:
    engine = LLMEngine(model, num_blocks, block_size, max_num_seqs=256, max_num_batched_tokens=512,
                       check_invariants=False)
    start = time.perf_counter()
    outputs = engine.generate([p for p, _ in requests], [o for _, o in requests])
    elapsed = time.perf_counter() - start
    st = engine.stats
    tokens = sum(o for _, o in requests)
    return dict(time_s=elapsed, tokens=tokens, tokens_per_s=tokens / elapsed, steps=st.num_steps,
                num_blocks=num_blocks, mean_rows_per_step=statistics.mean(st.batch_sizes),
                max_rows_per_step=max(st.batch_sizes), preemptions=st.num_preemptions,
                mean_used_blocks=statistics.mean(st.used_blocks), batch_sizes=st.batch_sizes, outputs=outputs)


def run_hf_continuous(model: GPT2, requests, num_blocks: int, block_size: int) -> dict:
    """transformers' continuous batching (the manager behind `generate_batch`) with the same KV budget (its default
    sizes the cache from free memory: gigabytes on a CPU), warmed up first."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    logging.getLogger("ContinuousBatchingLogger").setLevel(logging.ERROR)
    hf = model.to_hf()
    gc = GenerationConfig(max_new_tokens=max(o for _, o in requests), do_sample=False, eos_token_id=None,
                          pad_token_id=0)
    cb = ContinuousBatchingConfig(page_size=block_size, num_blocks=num_blocks, max_batch_tokens=512)
    hf.generate_batch([requests[0][0][:4]], generation_config=gc, continuous_batching_config=cb, max_new_tokens=2,
                      progress_bar=False)  # warm-up
    with hf.continuous_batching_context_manager(generation_config=gc, block=True, warmup=False,
                                                continuous_batching_config=cb) as manager:
        start = time.perf_counter()
        ids = [manager.add_request(p, request_id=f"r{i}", max_new_tokens=o) for i, (p, o) in enumerate(requests)]
        done = {}
        while len(done) < len(ids):
            result = manager.get_result(timeout=600)
            if result is None:
                raise RuntimeError("transformers' continuous batching returned no result")
            if result.is_finished():
                done[result.request_id] = list(result.generated_tokens)
        elapsed = time.perf_counter() - start
    tokens = sum(o for _, o in requests)
    return dict(time_s=elapsed, tokens=tokens, tokens_per_s=tokens / elapsed, outputs=[done[i] for i in ids])


def gather_cost(config: GPT2Config, batch: int, context: int, block_size: int, repeats: int) -> dict:
    """One layer's decode attention over `context` cached tokens per row: a contiguous (B, nh, T, hs) cache vs the
    paged pool (write the new token to its slot, gather the row's blocks, attend)."""
    import torch.nn.functional as F

    nh, hs = config.n_kv_head, config.head_dim
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, nh, 1, hs, generator=g)  # (B, nh, 1, hs)
    k = torch.randn(batch, nh, context, hs, generator=g)  # (B, nh, T, hs)
    v = torch.randn(batch, nh, context, hs, generator=g)
    need = -(-(context + 1) // block_size)
    cache = PagedKVCache(config, num_blocks=batch * need, block_size=block_size)
    perm = torch.randperm(batch * need, generator=g).tolist()
    tables = [perm[r * need:(r + 1) * need] for r in range(batch)]
    cache.prepare(tables, [context - 1] * batch, [1] * batch)

    def contiguous():
        F.scaled_dot_product_attention(q, k, v)

    def paged():
        keys, values = cache.update(q, q, 0)  # (B, nh, T, hs) gathered
        F.scaled_dot_product_attention(q, keys, values)

    times = {}
    for name, fn in (("contiguous", contiguous), ("paged", paged)):
        fn()
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(10):
                fn()
            samples.append((time.perf_counter() - t) / 10)
        times[name] = statistics.median(samples)
    return dict(batch=batch, context=context, block_size=block_size, contiguous_ms=1e3 * times["contiguous"],
                paged_ms=1e3 * times["paged"], paged_over_contiguous=times["paged"] / times["contiguous"])


def run_serving(model: GPT2, s: ServingSettings) -> dict:
    requests = make_requests(s, model.config.vocab_size)
    static_batch = max(1, s.budget_tokens // s.max_len)
    start = time.perf_counter()
    static = run_static(model, requests, static_batch)
    cont = run_continuous(model, requests, s.budget_tokens // s.block_size, s.block_size)
    hf = run_hf_continuous(model, requests, s.budget_tokens // s.block_size, s.block_size) if s.hf else None
    cost = gather_cost(model.config, s.gather_batch, s.gather_context, s.block_size, s.repeats)
    alone = [generate(model, torch.tensor([p]), o)[0, len(p):].tolist() for p, o in requests[:4]]
    summary = dict(
        continuous_over_static=cont["tokens_per_s"] / static["tokens_per_s"],
        kvlib_over_hf_generate_batch=cont["tokens_per_s"] / hf["tokens_per_s"] if hf else None,
        same_tokens_static=static["outputs"] == cont["outputs"],
        same_tokens_hf=hf["outputs"] == cont["outputs"] if hf else None,
        same_tokens_alone_first4=alone == cont["outputs"][:4],
        paged_attention_over_contiguous=cost["paged_over_contiguous"],
        targets="continuous_over_static >= 2; kvlib_over_hf_generate_batch >= 1",
    )
    c = model.config
    return dict(meta=dict(device=device_label("cpu"), torch=torch.__version__, config=dict(
        n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_positions=c.n_positions, vocab_size=c.vocab_size),
        settings=asdict(s), kv_bytes_per_token=2 * c.n_layer * c.n_embd * 4,
        request_lengths=[(len(p), o) for p, o in requests], elapsed_s=time.perf_counter() - start),
        static=static, continuous=cont, hf=hf, gather=cost, summary=summary)


def report(result: dict) -> str:
    st, co, hf, sm, s = result["static"], result["continuous"], result["hf"], result["summary"], result["meta"]["settings"]
    lines = [f"serving bench on {result['meta']['device']}: {s['num_requests']} {s['workload']}-like requests, KV budget "
             f"{s['budget_tokens']} token slots",
             f"static batching (batch {st['batch_size']}, max-length reservation): {st['tokens_per_s']:.1f} tok/s, "
             f"{st['steps']} steps, useful rows {100 * st['useful_row_share']:.0f}%",
             f"continuous + paged ({co['num_blocks']} blocks): {co['tokens_per_s']:.1f} tok/s, {co['steps']} steps, "
             f"mean batch {co['mean_rows_per_step']:.1f} (max {co['max_rows_per_step']}), "
             f"preemptions {co['preemptions']}",
             f"continuous_over_static: {sm['continuous_over_static']:.2f}x"]
    if hf:
        lines.append(f"transformers continuous batching: {hf['tokens_per_s']:.1f} tok/s; kvlib_over_hf_generate_batch "
                     f"{sm['kvlib_over_hf_generate_batch']:.2f}x; same tokens {sm['same_tokens_hf']}")
    g = result["gather"]
    lines.append(f"attention per layer, batch {g['batch']} x {g['context']} tokens: contiguous {g['contiguous_ms']:.3f} "
                 f"ms, paged (write + gather + attend) {g['paged_ms']:.3f} ms ({g['paged_over_contiguous']:.2f}x)")
    lines.append(f"same tokens as static batching: {sm['same_tokens_static']}; first 4 as generate alone: "
                 f"{sm['same_tokens_alone_first4']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from .serving_figures import write_serving

    p = argparse.ArgumentParser(prog="python -m kvlib.measure.bench serving", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gpt2", choices=("gpt2", "tiny"), help="shapes, seeded random weights")
    p.add_argument("--workload", default="alpaca", choices=("alpaca", "sharegpt"))
    p.add_argument("--requests", type=int, help="number of requests (default 16)")
    p.add_argument("--out", help="write serving_<device>.json and the figures to this directory")
    p.add_argument("--quick", action="store_true", help="a small run (for tests and the notebook's live cell)")
    p.add_argument("--no-hf", action="store_true", help="skip transformers' continuous batching")
    args = p.parse_args(argv)
    s = ServingSettings(workload=args.workload, hf=not args.no_hf, **(QUICK_SERVING if args.quick else {}))
    if args.requests:
        s.num_requests = args.requests
    config = GPT2Config(**TINY) if args.model == "tiny" else GPT2Config.from_name("gpt2")
    model = random_gpt2(GPT2Config(**{**config.__dict__, "attn_implementation": "sdpa"}))
    if s.max_len > config.n_positions:  # a smaller model: reserve its own maximum, keep the budget at 2 of them
        s.budget_tokens = s.budget_tokens * config.n_positions // s.max_len
        s.max_len = config.n_positions
    result = run_serving(model, s)
    print(report(result))
    if args.out:
        for path in write_serving(result, args.out, quick=args.quick):
            print(f"wrote {path}")
    return result
