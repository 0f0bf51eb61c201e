"""The weight-streaming floor: one vector-matrix pass over every weight matrix, which a batch-1 decode step must
make once per token, and what one small op between its products adds (the GELU diagnostic).

Shapes: C channels, V vocabulary; a pass multiplies one row (1, C) or (1, 4C) by each matrix.
"""
from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from .. import timing
from ...model.gpt2 import GPT2


def weight_pass(model: GPT2, op_between: bool = False, linear_head: bool = False):
    """(one_pass, bytes): a function making one vector-matrix pass over every weight matrix, laid out as kvlib
    multiplies them, and the bytes that pass reads.

    op_between=True also runs a GELU on each product's output, the cheapest op a block runs between two products:
    a diagnostic of what a single small op costs once a product has streamed megabytes through the caches.
    linear_head=True computes the LM head as F.linear on the tied (V, C) weight, as transformers does, instead of
    kvlib's CPU layout (x @ a contiguous (C, V) copy): the floor without the copy's extra memory.
    """
    mats = [(m.bias, m.weight) for b in model.transformer.h for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc,
                                                                     b.mlp.c_proj)]
    w = model.lm_head.weight  # (V, C)
    on_cpu = w.device.type == "cpu" and not linear_head
    head_t = w.t().contiguous() if on_cpu else None  # (C, V): kvlib's CPU LM head
    x = {n: torch.randn(1, n, dtype=w.dtype, device=w.device) for n in {wt.shape[0] for _, wt in mats}}

    @torch.inference_mode()
    def one_pass():
        for bias, weight in mats:
            y = torch.addmm(bias, x[weight.shape[0]], weight)  # (1, out)
            if op_between:
                F.gelu(y, approximate="tanh")
        return x[w.shape[1]] @ head_t if on_cpu else F.linear(x[w.shape[1]], w)  # (1, V)

    return one_pass, sum(wt.numel() * wt.element_size() for _, wt in mats) + w.numel() * w.element_size()


def weight_streaming_floor(model: GPT2, repeats: int = 5, warmup: int = 1) -> timing.Measurement:
    """Seconds of one pass over the weights (see weight_pass): no batch-1 decode step can take less."""
    one_pass, nbytes = weight_pass(model)
    samples = timing.measure(one_pass, model.lm_head.weight.device, repeats, warmup)
    return timing.summarize(samples, sweep="floor", method="weight-floor", batch_size=1, context=0, tokens=1,
                            dtype=timing.dtype_name(model), bytes_per_step=nbytes)


def op_between_gap(model: GPT2, pairs: int, passes: int) -> timing.Measurement:
    """What one GELU after each block product adds to a pass over the weights (see weight_pass): the paired
    difference (floor + GELUs) - floor of `pairs` interleaved runs of `passes` passes each, the order alternating,
    so that load that drifts over seconds cancels out of each difference. Seconds per pass, as a Measurement."""
    device = model.lm_head.weight.device
    plain, _ = weight_pass(model)
    gelu, _ = weight_pass(model, op_between=True)
    diffs = []
    for i in range(pairs):
        seconds = {}
        for f in ((plain, gelu) if i % 2 else (gelu, plain)):
            seconds[f] = timing.measure(lambda: [f() for _ in range(passes)], device, 1, 1 if i == 0 else 0)[0]
        diffs.append((seconds[gelu] - seconds[plain]) / passes)
    return timing.summarize(diffs, sweep="floor-gap", method="gelu-minus-floor", batch_size=1, context=0, tokens=1,
                            dtype=timing.dtype_name(model))


def gelu_alone_us(model: GPT2, calls: int = 2000) -> float:
    """Microseconds of one GELU on a (1, 4C) row, timed alone in a tight loop (its code and data stay cached)."""
    x = torch.randn(1, 4 * model.config.n_embd, dtype=model.lm_head.weight.dtype, device=model.lm_head.weight.device)

    def run():
        for _ in range(calls):
            F.gelu(x, approximate="tanh")

    return 1e6 * statistics.median(timing.measure(run, x.device, repeats=3, warmup=1)) / calls
