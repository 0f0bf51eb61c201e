"""Where an engine step's milliseconds go: torch's profiler over a whole serve() run, every op's self time put in
one of a few buckets, the rest of the step (Python: scheduling, building inputs, bookkeeping, dispatch) by
difference. kvlib's model forward is marked with a hook, so its inside and outside are told apart; vLLM's is not
hooked, its op names tell. Also: one layer's decode attention through the paged pool's gather vs a contiguous cache.

Buckets: matrix products (the weights' products: addmm, mm, linear, oneDNN's prepacked linear, which may carry a
fused GELU), attention (SDPA, softmax, vLLM's attention ops), index ops (the paged pool's gathers and slot writes,
vLLM's cache writes), compiled regions (code torch.compile generated: its kernels are not ops the profiler names),
other ops (layer norms, GELU, adds, copies, argmax, tensor construction). Profiler overhead (about a microsecond per
op) is included. Each summary keeps the ops that took the most time, to check the buckets against.
"""
from __future__ import annotations

import statistics
import time

import torch

from ...config import GPT2Config
from .engine_driver import profiled_serve

BUCKETS = {  # checked in this order: "attention" before "products" (bmm)
    "index ops (K/V gathers, slot writes)": ("aten::index", "index_put", "index_select", "aten::gather", "scatter",
                                             "index_copy", "reshape_and_cache", "kv_cache_update"),
    "compiled regions": ("compiledfxgraph", "torch-compiled region", "aotdispatcher", "torchdynamo",
                         "pregraph bytecode", "compiledfunction"),
    "attention": ("scaled_dot_product", "flash_attention", "softmax", "attention", "attn"),
    "matrix products": ("addmm", "aten::mm", "aten::linear", "aten::matmul", "linear_pointwise", "onednn", "gemm",
                        "_c::mm", "baddbmm", "aten::bmm"),
}

ORDER = ("matrix products", "attention", "index ops (K/V gathers, slot writes)", "compiled regions", "other ops")


def bucket(op: str) -> str:
    name = op.lower()
    for key, patterns in BUCKETS.items():
        if any(p in name for p in patterns):
            return key
    return "other ops"


def summarize(prof: dict, steps: int, padded_share: float | None = None) -> dict:
    """ms per step in each bucket. With a kvlib::forward region: ops and Python inside and outside the forward."""
    per = 1e-3 / steps
    step_us = prof["regions"].get("kvlib::step", 0.0)
    fwd_us = prof["regions"].get("kvlib::forward")
    out = dict(steps=steps, step_ms=step_us * per, wall_ms_per_step=1e3 * prof["wall_s"] / steps)
    inside = "kvlib::forward/" if fwd_us is not None else "kvlib::step/"
    buckets = {k: 0.0 for k in ORDER}
    outside_ops = 0.0
    for key, (_, self_us) in prof["ops"].items():
        if key.startswith(inside):
            buckets[bucket(key[len(inside):])] += self_us
        elif key.startswith("kvlib::step/"):
            outside_ops += self_us
    out["buckets_ms"] = {k: v * per for k, v in buckets.items() if v or k != "compiled regions"}
    top = sorted(((k, c, t) for k, (c, t) in prof["ops"].items() if k.startswith("kvlib::step/")
                  or (fwd_us is not None and k.startswith(inside))), key=lambda x: -x[2])[:12]
    out["top_ops"] = [[k.split("/", 1)[1], c, round(t * per, 4)] for k, c, t in top]
    ops_in = sum(buckets.values())
    if fwd_us is not None:
        out["buckets_ms"]["Python and dispatch in the forward"] = (fwd_us - ops_in) * per
        out["buckets_ms"]["ops outside the forward (inputs, sampling)"] = outside_ops * per
        out["buckets_ms"]["scheduling and Python outside the forward"] = (step_us - fwd_us - outside_ops) * per
    else:
        out["buckets_ms"]["scheduling, Python and dispatch"] = (step_us - ops_in) * per
    if padded_share is not None:  # products and attention scale with the positions computed, padding included
        compute = out["buckets_ms"]["matrix products"] + out["buckets_ms"]["attention"]
        out["padding_ms_estimate"] = compute * padded_share
        out["padded_share"] = padded_share
    return out


def profile_kvlib(adapter, requests) -> dict:
    """Profile serve(adapter, requests), adapter a fresh serving_engines.KvlibEngine: its steps and model forward
    marked as regions. The padded share: positions computed for padding / positions computed (products)."""
    from torch.autograd.profiler import record_function

    model, regions = adapter.engine.model, []

    def enter(module, args, kwargs=None):
        regions.append(record_function("kvlib::forward"))
        regions[-1].__enter__()

    def leave(module, args, output):
        regions.pop().__exit__(None, None, None)

    hooks = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave)]
    try:
        prof = profiled_serve(adapter, requests)["profile"]  # each step a kvlib::step region
    finally:
        for h in hooks:
            h.remove()
    c = adapter.counters()
    padded = sum(c["padded_tokens"])
    return summarize(prof, c["steps"], 1 - sum(c["batched_tokens"]) / padded if padded else None)


def gather_cost(config: GPT2Config, batch: int, context: int, block_size: int, repeats: int) -> dict:
    """One layer's decode step over `context` cached tokens per row, written out in plain PyTorch as kvlib's caches
    do it. Both sides write the new token's K and V, then attend. Contiguous: (B, nh, T_max, hs) buffers, the new
    token written in place at slot `context`, attention over the filled prefix (a view, no copy). Paged: a pool of
    blocks, the new token written to its slot, every row's blocks gathered (a copy of all its K/V), attention."""
    import torch.nn.functional as F

    nh, hs = config.n_kv_head, config.head_dim
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, nh, 1, hs, generator=g)  # (B, nh, 1, hs)
    new = torch.randn(batch, nh, 1, hs, generator=g)  # the new token's K (and V)
    buf_k, buf_v = (torch.randn(batch, nh, context + 1, hs, generator=g) for _ in range(2))  # (B, nh, T, hs)
    need = -(-(context + 1) // block_size)
    pool_k, pool_v = (torch.randn(batch * need * block_size, nh, hs, generator=g) for _ in range(2))  # (N*S, nh, hs)
    blocks = torch.randperm(batch * need, generator=g).view(batch, need)  # (B, blocks): each row's block table
    slots = (blocks[:, :, None] * block_size + torch.arange(block_size)).view(batch, -1)[:, :context + 1]  # (B, T)
    new_slots = slots[:, context]  # (B,)

    def contiguous():
        buf_k[:, :, context:] = new
        buf_v[:, :, context:] = new
        F.scaled_dot_product_attention(q, buf_k, buf_v)

    def paged():
        pool_k.index_copy_(0, new_slots, new[:, :, 0])
        pool_v.index_copy_(0, new_slots, new[:, :, 0])
        keys, values = pool_k[slots].transpose(1, 2), pool_v[slots].transpose(1, 2)  # (B, nh, T, hs) gathered
        F.scaled_dot_product_attention(q, keys, values)

    times = {}
    with torch.inference_mode():
        for name, fn in (("contiguous", contiguous), ("paged", paged)) * 2:  # twice: the first round warms up
            samples = []
            for _ in range(repeats):
                t = time.perf_counter()
                for _ in range(10):
                    fn()
                samples.append((time.perf_counter() - t) / 10)
            times[name] = statistics.median(samples)
    return dict(batch=batch, context=context, block_size=block_size, contiguous_ms=1e3 * times["contiguous"],
                paged_ms=1e3 * times["paged"], paged_over_contiguous=times["paged"] / times["contiguous"])
