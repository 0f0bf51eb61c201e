"""What a serving engineer reads off a run of engine_driver.serve(): throughput, TTFT, TPOT, normalized latency,
repeats with their spread, a speedup as steps x time per step, and where two engines' greedy tokens part.

Definitions (the vLLM paper's and vLLM's benchmark scripts'): TTFT = first token time - arrival; TPOT = (last token
time - first token time) / (output tokens - 1); normalized latency = (last token time - arrival) / output tokens,
averaged over requests (the paper's Fig. 12). Percentiles interpolate linearly between order statistics.
"""
from __future__ import annotations

import statistics

import torch

from ...model.gpt2 import GPT2


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency(served: dict) -> dict:
    """Per-request TTFT, TPOT and normalized latency (seconds), with p50/p99 and means."""
    ttft, tpot, norm = [], [], []
    for arrival, times in zip(served["arrivals"], served["token_times"]):
        ttft.append(times[0] - arrival)
        if len(times) > 1:
            tpot.append((times[-1] - times[0]) / (len(times) - 1))
        norm.append((times[-1] - arrival) / len(times))
    out = dict(normalized_latency_s=statistics.mean(norm))
    for name, xs in (("ttft", ttft), ("tpot", tpot)):
        out.update({f"{name}_p50_s": percentile(xs, 50), f"{name}_p99_s": percentile(xs, 99),
                    f"{name}_mean_s": statistics.mean(xs)})
    return out


def throughput(served: dict) -> dict:
    """Generated tokens/s over the run, steps, mean time per step and the queue's refills: requests whose first
    token came after some request had finished (a place freed, then filled from the waiting queue)."""
    tokens = sum(len(t) for t in served["tokens"])
    steps = len(served["step_end"])
    first_done = min(times[-1] for times in served["token_times"])
    refills = sum(times[0] > first_done for times in served["token_times"])
    return dict(tokens=tokens, elapsed_s=served["elapsed_s"], tokens_per_s=tokens / served["elapsed_s"],
                steps=steps, ms_per_step=1e3 * served["elapsed_s"] / steps, refilled_requests=refills)


def spread(values: list[float]) -> dict:
    """Median, min and max of repeated measurements (and the values, in run order)."""
    return dict(median=statistics.median(values), min=min(values), max=max(values), values=list(values))


def decompose(fast: dict, slow: dict) -> dict:
    """fast / slow throughput on the same tokens = (slow's steps / fast's steps) x (slow's / fast's time per step).
    Each argument: a throughput() dict (the medians over repeats are taken by the caller)."""
    fewer_steps = slow["steps"] / fast["steps"]
    step_time = slow["ms_per_step"] / fast["ms_per_step"]
    return dict(speedup=fewer_steps * step_time, fewer_steps=fewer_steps, per_step_time=step_time,
                steps=(fast["steps"], slow["steps"]), ms_per_step=(fast["ms_per_step"], slow["ms_per_step"]))


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where a and b differ (the shorter length if one is a prefix), None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@torch.inference_mode()
def logit_gap(model: GPT2, prompt: list[int], tokens: list[int], at: int, other: int) -> dict:
    """Teacher-force prompt + tokens[:at] through `model`; the logits at that position of tokens[at] (this
    engine's pick) and of `other` (the peer's), and their gap. A near-tie is a gap of a few float roundings."""
    ids = torch.tensor([prompt + tokens[:at]])  # (1, T)
    logits = model(ids, logits_to_keep=1)[0, -1].double()  # (V,)
    top2 = torch.topk(logits, 2).values
    return dict(position=at, token=tokens[at], other=other, gap=float(logits[tokens[at]] - logits[other]),
                top2_gap=float(top2[0] - top2[1]))


def compare_tokens(model: GPT2, requests, ours: list[list[int]], theirs: list[list[int]]) -> dict:
    """Every request's tokens, ours against the peer's: how many are identical, and each difference with its
    logit gap under our model (small: a near-tie that float rounding can flip)."""
    diffs = []
    for i, ((prompt, _), a, b) in enumerate(zip(requests, ours, theirs)):
        at = first_difference(a, b)
        if at is not None:
            gap = logit_gap(model, list(prompt), a, at, b[at]) if at < min(len(a), len(b)) else {"position": at}
            diffs.append(dict(request=i, **gap))
    return dict(requests=len(ours), identical=len(ours) - len(diffs), differences=diffs)
