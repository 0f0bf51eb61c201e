"""`python -m kvlib.measure.bench serving`: serving measured as serving engineers measure it, kvlib's engine side by
side with vLLM itself, on one set of weights (seeded random GPT-2-small shapes, fp32) and one request set.

Requests: prompt and output lengths drawn like the vLLM paper's ShareGPT and Alpaca workloads (long-tailed, with its
means), clipped to the model's context; random prompt tokens; each request generates exactly its output length
(greedy, no EOS), so every engine does the same work and must produce the same tokens. Engines, at one KV budget
(in token slots; vLLM gets the same bytes): kvlib's LLMEngine (continuous batching, paged blocks), vLLM's CPU build
in its default configuration (torch.compile) and eager (`enforce_eager=True`), static batching reserving prompt +
max_new_tokens per row and reserving the model's maximum (Orca (Max)), transformers' continuous batching.

Parts (each one locked run of a few minutes; they merge into one serving_cpu.json under --out):
  alpaca, sharegpt  offline throughput: all requests at once, engines in turn, repeated, with the spread
  online            Poisson arrivals at several rates: TTFT, TPOT (p50, p99), normalized latency
  profile           where a kvlib engine step's time goes, beside vLLM's; paged vs contiguous attention per layer
  attention         one layer's decode attention against context: the gather, block-wise (the engine's), contiguous;
                    with vLLM's environment, vLLM's CPU attention op beside block-wise there
  chunked           a long prompt arriving while others decode: their gaps and its TTFT, with and without chunking
  products          one step's weight products, plain addmm, the engine's and oneDNN's layout, at several row counts
  decode            one decode step against context: kvlib's compiled engine beside vLLM's default
vLLM runs where a venv with it is named (--vllm-venv DIR or KVLIB_VLLM_VENV); otherwise the bench says why and
measures the rest. Build one with `python -m kvlib.measure.bench.vllm_env DIR`.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from ...config import GPT2Config
from ...model.gpt2 import GPT2
from ...model.loading import random_gpt2
from ..figures import device_label
from ..waste import sample_lengths
from . import serving_chunked, serving_decode
from .serving_attention import run_attention, run_attention_in_vllm
from .serving_chunked import run_chunked
from .serving_decode import run_decode
from .serving_products import run_products
from .serving_profile import gather_cost
from .serving_runs import run_offline, run_online, run_profile
from .vllm_peer import VLLMPeer, find_vllm, save_checkpoint, vllm_process_env

PARTS = ("alpaca", "sharegpt", "online", "profile", "attention", "chunked", "products", "decode")
KERNEL_PARTS = ("attention", "chunked", "products")  # no request set; only attention meets vLLM (its op alone)
TINY_SERVING = dict(n_layer=2, n_head=2, n_embd=128, n_positions=256, vocab_size=512)  # head size 64: vLLM runs it


@dataclass
class ServingSettings:
    model: str = "gpt2"  # "gpt2": GPT-2-small shapes; "tiny": TINY_SERVING (tests)
    workloads: dict = field(default_factory=lambda: {"alpaca": 32, "sharegpt": 8})  # requests per workload
    budget_reservations: dict = field(default_factory=lambda: {"alpaca": 2, "sharegpt": 2})  # KV budget, x n_positions
    online_workload: str = "alpaca"
    online_requests: int = 64
    rates: tuple = (1.0, 2.0, 4.0, 8.0, 16.0)  # requests/s
    saturated_s: float = 0.5  # normalized latency (s/token) past which an engine is not run at higher rates
    repeats: int = 3
    block_size: int = 32  # every paged engine's: vLLM's CPU attention takes multiples of 32 (its default is 128)
    max_num_seqs: int = 256  # vLLM's default
    max_num_batched_tokens: int = 512  # chunked prefill's token budget per step, for every engine
    max_output: int | None = None  # cap on output lengths (--quick only)
    hf: bool = True
    seed: int = 0
    profile_label: str = "kvlib"  # the profile's name in the JSON ("kvlib_before": the engine before packed rows)
    attention_rows: int = 16  # --part attention: decode rows, and contexts (tokens per row), log-spaced
    attention_contexts: tuple = (32, 58, 106, 192, 349, 635, 1155, 2048)
    kernel_repeats: int = 15  # --part attention and products: interleaved samples per point
    product_rows: tuple = (1, 2, 3, 4, 8, 16, 32, 48)  # --part products
    chunked_case: dict = field(default_factory=lambda: dict(serving_chunked.CASE))  # --part chunked
    decode_case: dict = field(default_factory=lambda: dict(serving_decode.CASE))  # --part decode


QUICK = dict(workloads={"alpaca": 8, "sharegpt": 3}, online_requests=8, rates=(2.0, 8.0), repeats=1, max_output=48,
             attention_contexts=(32, 192, 1155), kernel_repeats=3, product_rows=(1, 16),
             chunked_case=dict(serving_chunked.CASE, decoders=4, output=24, long_prompt=200, budgets=(64, 256)),
             decode_case=dict(rows=(2,), prompts=(16, 200), new_tokens=16))


def make_requests(workload: str, n: int, config: GPT2Config, seed: int = 0,
                  max_output: int | None = None) -> list[tuple[list[int], int]]:
    """(prompt token ids, output length) per request: lengths like the workload's, clipped to the context."""
    g = torch.Generator().manual_seed(seed)
    lengths = sample_lengths(workload, n, max_len=config.n_positions, seed=seed)
    return [(torch.randint(0, config.vocab_size, (p,), generator=g).tolist(), min(o, max_output or o))
            for p, o in lengths]


def kvlib_source() -> str:
    """The kvlib measured: its git commit (+ "dirty" if the library's files differ from it), or $KVLIB_SOURCE."""
    import os
    import subprocess

    if os.environ.get("KVLIB_SOURCE"):
        return os.environ["KVLIB_SOURCE"]
    root = Path(__file__).resolve().parents[3]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "kvlib/serving", "kvlib/cache",
                                "kvlib/model", "kvlib/attention.py"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (commit or "unknown") + (" + uncommitted library changes" if dirty.strip() else "")


def machine(threads: int) -> dict:
    import transformers

    return dict(device=device_label("cpu"), threads=threads, torch=torch.__version__,
                transformers=transformers.__version__, python=platform.python_version(), kvlib=kvlib_source(),
                date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))


@contextlib.contextmanager
def vllm_peers(model: GPT2, budget_tokens: int, s: ServingSettings, venv: str | None, which: tuple, threads: int,
               log=print):
    """{"vllm_default": peer, "vllm_eager": peer} (those in `which`) and their info, or ({}, {"absent": why})."""
    python, version = find_vllm(venv)
    if python is None:
        log(f"vLLM: not measured: {version}")
        yield {}, {"absent": version}
        return
    kv = budget_tokens * 2 * model.config.n_layer * model.config.n_embd * 4  # the same bytes as kvlib's budget
    with tempfile.TemporaryDirectory(prefix="kvlib-ckpt-") as ckpt, contextlib.ExitStack() as stack:
        save_checkpoint(model, ckpt)
        peers = {}
        for name in which:
            peers[name] = stack.enter_context(VLLMPeer(
                python, Path(ckpt), enforce_eager=name == "vllm_eager", threads=threads,
                max_model_len=model.config.n_positions, kv_cache_memory_bytes=kv,
                block_size=s.block_size, max_num_seqs=s.max_num_seqs,
                max_num_batched_tokens=s.max_num_batched_tokens))
        info = {name: peer.info() for name, peer in peers.items()}
        log("vLLM: " + "; ".join(f"{n} {i['vllm']} (block_size {i['block_size']}, {i['num_gpu_blocks']} blocks, "
                                 f"started in {i['startup_s']:.0f} s)" for n, i in info.items()))
        yield peers, info


def run_part(part: str, model: GPT2, s: ServingSettings, venv: str | None, threads: int, log=print) -> dict:
    """One part's results and the machine it ran on."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    start = time.perf_counter()
    if part in KERNEL_PARTS:
        log(f"{part}: kvlib" + (" (and vLLM's attention op where found)" if part == "attention" else " alone"))
        vllm = {"absent": "not used by this part"}
        if part == "attention":
            result = run_attention(model.config, s.attention_rows, s.attention_contexts, s.block_size,
                                   s.kernel_repeats, log)
            python, version = find_vllm(venv)
            vllm = {"absent": version}
            if python is not None:
                log(f"attention: vLLM {version}'s op in its environment, beside the block-wise kernel")
                result["vllm"] = run_attention_in_vllm(python, vllm_process_env(threads), model.config,
                                                       s.attention_rows, s.attention_contexts, s.block_size,
                                                       s.kernel_repeats)
                vllm = {"vllm": version, "op": "cpu_attention_with_kv_cache, in its environment (torch 2.13 there "
                                               "too), taking turns with the block-wise kernel"}
        elif part == "chunked":
            result = run_chunked(model, s.chunked_case, s.block_size, s.repeats, log)
        else:
            result = run_products(model, s.product_rows, s.kernel_repeats, log)
        meta = dict(machine(threads), vllm=vllm, elapsed_s=time.perf_counter() - start)
        return dict(meta=meta, **result)
    if part == "decode":
        budget = serving_decode.budget_tokens(s.decode_case, s.block_size)
        log(f"decode: {s.decode_case}, KV budget {budget} token slots")
        with vllm_peers(model, budget, s, venv, ("vllm_default",), threads, log) as (peers, vllm):
            result = run_decode(model, s.decode_case, s, peers, log)
        meta = dict(machine(threads), vllm=vllm, elapsed_s=time.perf_counter() - start)
        return dict(meta=meta, **result)
    workload = {"online": s.online_workload, "profile": "alpaca"}.get(part, part)
    n = s.online_requests if part == "online" else s.workloads[workload]  # profile: the offline Alpaca-like set
    budget = s.budget_reservations[workload] * model.config.n_positions
    requests = make_requests(workload, n, model.config, s.seed, s.max_output)
    which = {"online": ("vllm_default",), "profile": ("vllm_eager",)}.get(part, ("vllm_default", "vllm_eager"))
    log(f"{part}: {n} {workload}-like requests, KV budget {budget} token slots")
    with vllm_peers(model, budget, s, venv, which, threads, log) as (peers, vllm):
        if part in s.workloads:
            result = run_offline(model, requests, budget, s, peers, log)
        elif part == "online":
            result = run_online(model, requests, budget, s.rates, s, peers, log)
        else:
            result = run_profile(model, requests, budget, s, peers)
            for label in (s.profile_label, "kvlib_compiled"):  # which engine
                result[label].update(kvlib=kvlib_source(), date=machine(threads)["date"])
            result["gather"] = gather_cost(model.config, batch=16, context=512, block_size=s.block_size, repeats=5)
    meta = dict(machine(threads), vllm=vllm, elapsed_s=time.perf_counter() - start)
    return dict(meta=meta, workload=workload, **result)


def merge(data: dict, part: str, result: dict, model: GPT2, s: ServingSettings) -> dict:
    """Put one part's result into `data` (other parts stay; each part records its machine and date)."""
    c = model.config
    data.setdefault("meta", {}).update(
        model=dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_positions=c.n_positions,
                   vocab_size=c.vocab_size, weights=model.weights_source, dtype="float32"),
        kv_bytes_per_token=2 * c.n_layer * c.n_embd * 4, settings=asdict(s))
    data["meta"].setdefault("parts", {})[part] = result.pop("meta")
    if part in s.workloads:
        data.setdefault("offline", {})[part] = result
    elif part == "profile":  # profiles under other labels (an engine before a change) stay
        data.setdefault("profile", {}).update(result)
    else:
        data[part] = result
    return data


def main(argv: list[str] | None = None) -> dict:
    from .serving_figures import write_serving_figures
    from .serving_report import report, summary

    p = argparse.ArgumentParser(prog="python -m kvlib.measure.bench serving", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--part", action="append", choices=(*PARTS, "all"), help="what to run (repeatable; default all)")
    p.add_argument("--model", default="gpt2", choices=("gpt2", "tiny"), help="shapes, seeded random weights")
    p.add_argument("--vllm-venv", help="a venv with vLLM (default: $KVLIB_VLLM_VENV); without one vLLM is skipped")
    p.add_argument("--block-size", type=int, default=32, help="tokens per block, every paged engine (default 32; "
                                                               "vLLM's CPU build needs a multiple of 32)")
    p.add_argument("--repeats", type=int, help="offline repeats per engine, an odd number (default 3)")
    p.add_argument("--profile-label", default="kvlib", help="name of kvlib's profile in the JSON (other names "
                                                              "stay: e.g. kvlib_before, an engine before a change)")
    p.add_argument("--threads", type=int, help="torch threads, for kvlib and vLLM alike (default: torch's)")
    p.add_argument("--no-hf", action="store_true", help="skip transformers' continuous batching")
    p.add_argument("--quick", action="store_true", help="a small run for development (outputs capped)")
    p.add_argument("--out", help="merge the results into DIR/serving_cpu.json and redraw the figures there")
    p.add_argument("--figures-only", action="store_true",
                   help="with --out: recompute the summary, redraw figures from the JSON, run nothing")
    args = p.parse_args(argv)
    s = ServingSettings(model=args.model, hf=not args.no_hf, block_size=args.block_size,
                        profile_label=args.profile_label,
                        **(QUICK if args.quick else {}))
    if args.repeats:
        s = replace(s, repeats=args.repeats)
    if s.repeats % 2 == 0:  # an odd count: the median is one of the runs, so steps x time per step multiplies out
        p.error(f"--repeats must be odd, got {s.repeats}")
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    config = GPT2Config(**TINY_SERVING) if args.model == "tiny" else GPT2Config.from_name("gpt2")
    model = random_gpt2(replace(config, attn_implementation="sdpa"))
    path = Path(args.out) / ("serving_cpu_quick.json" if args.quick else "serving_cpu.json") if args.out else None
    parts = [] if args.figures_only else PARTS if not args.part or "all" in args.part else args.part
    data = json.loads(path.read_text()) if path and path.exists() else {}
    for part in parts:
        data = merge(data, part, run_part(part, model, s, args.vllm_venv, threads), model, s)
        data["summary"] = summary(data)
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=1) + "\n")
            print(f"wrote {path}")
    if path and args.figures_only and data:  # the summary is derived: recomputed with the code that reads it
        data["summary"] = summary(data)
        path.write_text(json.dumps(data, indent=1) + "\n")
    print(report(data))
    if path:
        for fig_path in write_serving_figures(data, path.parent, quick=args.quick):
            print(f"wrote {fig_path}")
    return data
