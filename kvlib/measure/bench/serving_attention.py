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

Shapes: R rows (one query each), nh heads, hs head size, T context, S block size, N blocks in the pool.
"""
from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F

from ...cache.paged.decode_kernel import decode_work, fast_decode_attention
from ...cache.paged.fast_attention import gather_decode_attention
from ...cache.paged.layout import read_slots, token_slots
from ...config import GPT2Config
from ..speculative import interleaved_seconds

METHODS = ("gather", "blockwise", "contiguous")
LABELS = {"gather": "gather, then fused attention (section 8)", "blockwise": "block-wise (the engine's decode kernel)",
          "contiguous": "contiguous cache, fused attention (floor)"}
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


def agreement(calls: dict) -> dict:
    """Largest |difference| of the gather's and the contiguous output from the block-wise one."""
    with torch.inference_mode():
        out = {name: call() for name, call in calls.items()}
    return {name: (out[name] - out["blockwise"]).abs().max().item() for name in ("gather", "contiguous")}


def _calls_per_sample(fn, target_s: float) -> int:
    t = time.perf_counter()
    fn()
    return max(1, math.ceil(target_s / max(time.perf_counter() - t, 1e-6)))


def time_context(config: GPT2Config, rows: int, context: int, block_size: int, repeats: int,
                 target_s: float = 0.02) -> dict:
    """ms per layer of each way at one context (median, min, max of `repeats` interleaved samples), the agreement
    check, and what building the step's work items costs (once per step, for all layers)."""
    x = attention_inputs(config, rows, context, block_size)
    calls = attention_calls(x)
    diff = agreement(calls)
    if max(diff.values()) > AGREE:
        raise RuntimeError(f"context {context}: the three ways disagree by {diff} (> {AGREE})")
    with torch.inference_mode():
        for call in calls.values():  # compile, allocate
            call()
        n = _calls_per_sample(calls["gather"], target_s)
        loops = {name: (lambda call=call: [call() for _ in range(n)]) for name, call in calls.items()}
        loops["decode_work"] = lambda: [decode_work(x["block_tables"], x["seq_lens"], block_size) for _ in range(n)]
        samples = interleaved_seconds(loops, repeats, warmup=1)
    ms = {name: [1e3 * s / n for s in v] for name, v in samples.items()}
    return dict(context=context, calls_per_sample=n, max_abs_diff=diff,
                ms={name: dict(median=statistics.median(v), min=min(v), max=max(v), samples=v)
                    for name, v in ms.items()},
                kv_bytes=2 * rows * context * config.n_kv_head * config.head_dim * 4)


def run_attention(config: GPT2Config, rows: int, contexts, block_size: int, repeats: int, log=print) -> dict:
    points = []
    for context in contexts:
        points.append(time_context(config, rows, context, block_size, repeats))
        m = points[-1]["ms"]
        log(f"  context {context:5d}: " + ", ".join(f"{k} {m[k]['median']:.3f} ms" for k in (*METHODS, "decode_work")))
    return dict(rows=rows, n_head=config.n_head, n_kv_head=config.n_kv_head, head_dim=config.head_dim,
                block_size=block_size, dtype="float32", repeats=repeats, agree_within=AGREE, points=points)


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
    return lines


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
