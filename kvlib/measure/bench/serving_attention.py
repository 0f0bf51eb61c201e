"""`--part attention`: one layer's decode attention against context, three ways over the same K/V.

- **gather**: `kvlib.cache.paged.fast_attention.gather_decode_attention`, the path of section 8 of notebook 07:
  every row's slots copied out of the pool into a (R, nkv, T, hs) tensor, then PyTorch's fused attention;
- **block-wise**: the engine's decode kernel, `kvlib.cache.paged.decode_kernel.fast_decode_attention`, which reads
  each (row, block) pair where it lies and merges a row's blocks by their log-sum-exps (compiled where it can be);
- **contiguous**: PyTorch's fused attention on (R, nh, T, hs) buffers that already hold the K/V (no pool, no copy):
  the floor, what a contiguous cache pays.

Each row holds `context` tokens in blocks scattered over the pool (a random permutation of its blocks, as a pool
looks after a while of serving). The block-wise side's work items (`decode_work`) are built once per step and shared
by every layer, so they are built outside the timed call and timed apart; the gather computes its slots inside.
The three outputs are checked equal (within `AGREE`) before anything is timed. Timings: the three calls take turns
within every repeat (kvlib.measure.speculative.interleaved_seconds), each sample a loop of calls long enough to time.

Where vLLM's environment is given, a fourth way runs there, in a process of its own: **vLLM's CPU attention op**
(`cpu_attention_with_kv_cache`, hand-written C++), over the same K/V copied into vLLM's cache by vLLM's own write
(`cpu_attn_reshape_and_cache`), taking turns with the block-wise kernel in that process (same torch, 2.13), so the
two are compared within one process; vLLM's per-step scheduler metadata is built once per step, like the work
items, and timed apart.

Shapes: R rows (one query each), nh heads, hs head size, T context, S block size, N blocks in the pool.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ...cache.paged.decode_kernel import decode_work, fast_decode_attention
from ...cache.paged.fast_attention import gather_decode_attention
from ...cache.paged.layout import read_slots, token_slots
from ...config import GPT2Config
from ..speculative import interleaved_seconds

METHODS = ("gather", "blockwise", "contiguous")
VLLM_METHODS = ("blockwise", "vllm")  # timed in vLLM's environment
LABELS = {"gather": "gather, then fused attention (section 8)", "blockwise": "block-wise (the engine's decode kernel)",
          "contiguous": "contiguous cache, fused attention (floor)",
          "vllm": "vLLM's CPU attention op (C++; its process)"}
AGREE = 1e-5  # largest |difference| allowed between any two of the three outputs, fp32


def attention_inputs(config: GPT2Config, rows: int, context: int, block_size: int, seed: int = 0) -> dict:
    """One layer's query, pool, block tables and the same K/V laid out contiguously, for `rows` rows of `context`."""
    nh, nkv, hs = config.n_head, config.n_kv_head, config.head_dim
    g = torch.Generator().manual_seed(seed)
    need = -(-context // block_size)  # blocks per row
    query = torch.randn(rows, nh, hs, generator=g)  # (R, nh, hs)
    key_cache, value_cache = (torch.randn(rows * need, nkv, block_size, hs, generator=g)  # (N, nkv, S, hs)
                              for _ in range(2))
    block_tables = torch.randperm(rows * need, generator=g).view(rows, need)  # (R, W): scattered blocks
    seq_lens = torch.full((rows,), context)  # (R,)
    pos = torch.arange(context)
    slots = token_slots(block_tables, pos, block_size)  # (R, T)
    k, v = (read_slots(c, slots).transpose(1, 2).contiguous() for c in (key_cache, value_cache))  # (R, nkv, T, hs)
    return dict(query=query, key_cache=key_cache, value_cache=value_cache, block_tables=block_tables,
                seq_lens=seq_lens, k=k, v=v, block_size=block_size)


def attention_calls(x: dict) -> dict:
    """The three ways, each a call returning (R, nh, hs); the block-wise side's work items built once here."""
    work = decode_work(x["block_tables"], x["seq_lens"], x["block_size"])
    nh, nkv = x["query"].shape[1], x["k"].shape[1]
    q4 = x["query"][:, :, None]  # (R, nh, 1, hs)
    return {
        "gather": lambda: gather_decode_attention(x["query"], x["key_cache"], x["value_cache"], x["block_tables"],
                                                  x["seq_lens"]),
        "blockwise": lambda: fast_decode_attention(x["query"], x["key_cache"], x["value_cache"], x["seq_lens"], work),
        "contiguous": lambda: F.scaled_dot_product_attention(q4, x["k"], x["v"], enable_gqa=nh != nkv)[:, :, 0],
    }


def vllm_attention_call(x: dict):
    """vLLM's CPU decode attention over the same K/V as `x` (only in vLLM's environment): its per-layer cache
    (N, nkv, 2S, hs), K and V of a (block, head) side by side, filled by its own write; returns (the call, the
    per-step metadata builder, the ISA its backend picks)."""
    from vllm import _custom_ops as ops  # noqa: PLC0415 - vLLM's environment only
    from vllm import envs  # noqa: PLC0415
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa  # noqa: PLC0415

    query, key_cache = x["query"], x["key_cache"]
    R, nh, hs = query.shape
    N, nkv, S, _ = key_cache.shape
    isa = _get_attn_isa(query.dtype, S, hs)
    cache = torch.empty(N, nkv, 2 * S, hs, dtype=query.dtype)
    k_cache, v_cache = cache[:, :, :S], cache[:, :, S:]
    slot_major = lambda c: c.transpose(1, 2).reshape(N * S, nkv, hs)  # noqa: E731 - row = block * S + offset
    ops.cpu_attn_reshape_and_cache(slot_major(key_cache), slot_major(x["value_cache"]), k_cache, v_cache,
                                   torch.arange(N * S), isa)
    block_table, seq_lens = x["block_tables"].to(torch.int32), x["seq_lens"].to(torch.int32)
    query_start_loc = torch.arange(R + 1, dtype=torch.int32)  # one query per row

    def metadata():
        return ops.cpu_attn_get_scheduler_metadata(
            num_reqs=R, num_heads=nh, num_kv_heads=nkv, head_dim=hs, seq_lens=seq_lens, dtype=query.dtype,
            query_start_loc=query_start_loc, causal=True, sliding_window_size=-1, isa=isa,
            enable_kv_split=envs.VLLM_CPU_ATTN_SPLIT_KV)

    meta = metadata()

    def call():
        out = torch.empty_like(query)
        ops.cpu_attention_with_kv_cache(
            query=query, key_cache=k_cache, value_cache=v_cache, output=out, query_start_loc=query_start_loc,
            seq_lens=seq_lens, scale=1 / math.sqrt(hs), causal=True, alibi_slopes=None, sliding_window=-1,
            block_table=block_table, softcap=0.0, scheduler_metadata=meta, s_aux=None)
        return out  # (R, nh, hs)

    return call, metadata, isa


def agreement(calls: dict) -> dict:
    """Largest |difference| of every other way's output from the block-wise one."""
    with torch.inference_mode():
        out = {name: call() for name, call in calls.items()}
    return {name: (out[name] - out["blockwise"]).abs().max().item() for name in out if name != "blockwise"}


def _calls_per_sample(fn, target_s: float) -> int:
    t = time.perf_counter()
    fn()
    return max(1, math.ceil(target_s / max(time.perf_counter() - t, 1e-6)))


def time_context(config: GPT2Config, rows: int, context: int, block_size: int, repeats: int,
                 target_s: float = 0.02, methods: tuple = METHODS) -> dict:
    """ms per layer of each way at one context (median, min, max of `repeats` interleaved samples), the agreement
    check, and what building the step's work items costs (once per step, for all layers; vLLM's metadata too)."""
    x = attention_inputs(config, rows, context, block_size)
    calls = attention_calls(x)
    per_step = {"decode_work": lambda: decode_work(x["block_tables"], x["seq_lens"], block_size)}
    extra = {}
    if "vllm" in methods:
        calls["vllm"], per_step["vllm_metadata"], extra["vllm_isa"] = vllm_attention_call(x)
    calls = {name: calls[name] for name in methods}
    diff = agreement(calls)
    if max(diff.values()) > AGREE:
        raise RuntimeError(f"context {context}: the ways disagree by {diff} (> {AGREE})")
    with torch.inference_mode():
        for call in calls.values():  # compile, allocate
            call()
        n = _calls_per_sample(calls[methods[0]], target_s)
        loops = {name: (lambda call=call: [call() for _ in range(n)]) for name, call in {**calls, **per_step}.items()}
        samples = interleaved_seconds(loops, repeats, warmup=1)
    ms = {name: [1e3 * s / n for s in v] for name, v in samples.items()}
    return dict(context=context, calls_per_sample=n, max_abs_diff=diff,
                ms={name: dict(median=statistics.median(v), min=min(v), max=max(v), samples=v)
                    for name, v in ms.items()},
                kv_bytes=2 * rows * context * config.n_kv_head * config.head_dim * 4, **extra)


def run_attention(config: GPT2Config, rows: int, contexts, block_size: int, repeats: int, log=print,
                  methods: tuple = METHODS) -> dict:
    points = []
    for context in contexts:
        points.append(time_context(config, rows, context, block_size, repeats, methods=methods))
        m = points[-1]["ms"]
        log(f"  context {context:5d}: " + ", ".join(f"{k} {v['median']:.3f} ms" for k, v in m.items()))
    return dict(rows=rows, n_head=config.n_head, n_kv_head=config.n_kv_head, head_dim=config.head_dim,
                block_size=block_size, dtype="float32", repeats=repeats, agree_within=AGREE, points=points)


def run_attention_in_vllm(python: Path, env: dict, config: GPT2Config, rows: int, contexts, block_size: int,
                          repeats: int, timeout_s: float = 3600) -> dict:
    """run_attention over VLLM_METHODS with vLLM's Python (`python`, a venv of its own), this kvlib on its path."""
    root = Path(__file__).resolve().parents[3]
    args = dict(n_embd=config.n_embd, n_head=config.n_head, n_kv_head=config.n_kv_head, rows=rows,
                contexts=list(contexts), block_size=block_size, repeats=repeats)
    run = subprocess.run([str(python), "-m", "kvlib.measure.bench.serving_attention", json.dumps(args)],
                         capture_output=True, text=True, timeout=timeout_s, cwd=root,
                         env={**env, "PYTHONPATH": str(root)})
    if run.returncode != 0:
        raise RuntimeError(f"vLLM's attention op could not be timed ({python}): "
                           + "\n".join(run.stderr.strip().splitlines()[-8:]))
    return json.loads(run.stdout.strip().splitlines()[-1])


def _vllm_side(argv: list[str]) -> None:
    """In vLLM's environment: run_attention over VLLM_METHODS for the JSON arguments, the result as one JSON line."""
    a = json.loads(argv[0])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    config = GPT2Config(n_embd=a["n_embd"], n_head=a["n_head"], n_kv_head=a["n_kv_head"])
    result = run_attention(config, a["rows"], a["contexts"], a["block_size"], a["repeats"], log=lambda *_: None,
                           methods=VLLM_METHODS)
    print(json.dumps(result))


def crossing(result: dict) -> dict:
    """Where block-wise is at least as fast as the gather (median against median), and their ratio per context."""
    ratio = {p["context"]: p["ms"]["gather"]["median"] / p["ms"]["blockwise"]["median"] for p in result["points"]}
    slower = [c for c, r in ratio.items() if r < 1]
    return dict(gather_over_blockwise=ratio, blockwise_slower_at=slower)


def attention_lines(data: dict) -> list[str]:
    a = data["attention"]
    lines = [f"one layer's decode attention, {a['rows']} rows x {a['n_head']} heads of {a['head_dim']}, "
             f"blocks of {a['block_size']}, fp32; ms per layer, median (min-max) of {a['repeats']} interleaved "
             f"samples:", f"  {'context':>7s}  " + "  ".join(f"{m:>22s}" for m in METHODS)
             + "  gather/block-wise  work items (per step)"]
    for p in a["points"]:
        m = p["ms"]
        cells = "  ".join(f"{m[k]['median']:7.3f} ({m[k]['min']:6.3f}-{m[k]['max']:6.3f})" for k in METHODS)
        lines.append(f"  {p['context']:7d}  {cells}  {m['gather']['median'] / m['blockwise']['median']:12.2f}x"
                     f"  {m['decode_work']['median']:8.3f} ms")
    worst = max(max(p["max_abs_diff"].values()) for p in a["points"])
    slower = crossing(a)["blockwise_slower_at"]
    lines.append(f"  outputs agree: largest |difference| {worst:.1e} (<= {a['agree_within']:.0e}); block-wise slower "
                 f"than the gather (medians) at: {', '.join(map(str, slower)) or 'no context'}")
    v = a.get("vllm")
    if v:
        lines += [f"vLLM's CPU attention op (ISA {v['points'][0]['vllm_isa']}) taking turns with block-wise in vLLM's "
                  f"environment, same K/V; ms per layer, median (min-max):",
                  f"  {'context':>7s}  {'block-wise':>22s}  {'vLLM op':>22s}  block-wise/vLLM"
                  "  vLLM metadata (per step)"]
        for p in v["points"]:
            m = p["ms"]
            cells = "  ".join(f"{m[k]['median']:7.3f} ({m[k]['min']:6.3f}-{m[k]['max']:6.3f})" for k in VLLM_METHODS)
            lines.append(f"  {p['context']:7d}  {cells}  {m['blockwise']['median'] / m['vllm']['median']:14.2f}x"
                         f"  {m['vllm_metadata']['median']:8.3f} ms")
        lines.append(f"  outputs agree: largest |difference| "
                     f"{max(p['max_abs_diff']['vllm'] for p in v['points']):.1e} (<= {v['agree_within']:.0e})")
    return lines


def blockwise_over_vllm(result: dict) -> dict:
    """context -> block-wise's median time over vLLM's op's, both timed in vLLM's process (result["vllm"])."""
    return {p["context"]: p["ms"]["blockwise"]["median"] / p["ms"]["vllm"]["median"] for p in result["vllm"]["points"]}


def spread_errorbar(ax, xs, spreads: list[dict], **kw):
    """Medians joined by a line, whiskers from each point's min to its max ({"median", "min", "max"} per point)."""
    med = [x["median"] for x in spreads]
    err = [[m - x["min"] for m, x in zip(med, spreads)], [x["max"] - m for m, x in zip(med, spreads)]]
    return ax.errorbar(xs, med, yerr=err, marker="o", ms=4, capsize=3, **kw)


def attention_figure(data: dict, device: str = ""):
    """ms per layer against context, log-log, the three ways with min-max whiskers."""
    import matplotlib.pyplot as plt

    from ..figures import plain_log_labels

    a = data["attention"]
    contexts = [p["context"] for p in a["points"]]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, color in zip(METHODS, ("tab:red", "tab:blue", "tab:gray")):
        spread_errorbar(ax, contexts, [p["ms"][name] for p in a["points"]], color=color, label=LABELS[name],
                        ls="--" if name == "contiguous" else "-")
    if a.get("vllm"):
        v = a["vllm"]["points"]
        spread_errorbar(ax, [p["context"] for p in v], [p["ms"]["vllm"] for p in v], color="tab:green", ls=":",
                        label=LABELS["vllm"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(contexts, [str(c) for c in contexts])
    ax.minorticks_off()
    plain_log_labels(ax.yaxis)
    ax.set_xlabel("context (tokens per row, log scale)")
    ax.set_ylabel("ms per layer and decode step (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Decode attention, one layer: {a['rows']} rows x {a['n_head']} heads of {a['head_dim']}, blocks of "
                 f"{a['block_size']}, fp32\nmedian, whiskers min-max of {a['repeats']} repeats — {device}",
                 fontsize=9)
    fig.tight_layout()
    return fig


if __name__ == "__main__":  # vLLM's side, started by run_attention_in_vllm
    _vllm_side(sys.argv[1:])
