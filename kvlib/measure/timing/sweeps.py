"""Sweeps: decode steps timed inside real generations, uncached forwards sampled on a grid of lengths, whole
generations against length, batch size and dtype. Each returns a list of `Measurement`.

Shapes: B batch, T_prompt prompt tokens, T_total tokens a step attends over (cached + new), S slots of a
fixed-shape cache.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..compiled import FixedShapeKVCache, compile_decode_step, generate_fixed_shape
from ...model.generation import decode_one_token, make_cache
from ...model.gpt2 import GPT2
from .clock import (METHODS, NAN, Measurement, StepClock, bytes_per_decode_step, dtype_name, measure, oom_record,
                    random_prompt, summarize, synchronize)


@torch.inference_mode()
def _greedy_run(model: GPT2, input_ids: torch.Tensor, max_new_tokens: int, method: str, clock: StepClock,
                step=None, fixed_cache: FixedShapeKVCache | None = None) -> None:
    """One greedy generation by `method`; clock.mark() after the prefill and after every later step."""
    if method in ("static-fixed", "static-compiled"):
        generate_fixed_shape(model, input_ids, max_new_tokens, step=step, cache=fixed_cache, clock=clock)
        return
    B, T_prompt = input_ids.shape
    kv = None if method == "uncached" else make_cache(model, method, B, T_prompt + max_new_tokens - 1)
    sequence = input_ids
    token = model(input_ids, kv, logits_to_keep=1)[:, -1].argmax(-1)  # (B,): the prefill
    clock.mark()
    for _ in range(max_new_tokens - 1):
        if kv is None:  # re-feed everything: a forward over T_total tokens
            sequence = torch.cat([sequence, token[:, None]], dim=1)  # (B, T_total)
            token = model(sequence, logits_to_keep=1)[:, -1].argmax(-1)
        else:
            token = decode_one_token(model, token, kv).argmax(-1)
        clock.mark()


def timed_generations(model: GPT2, input_ids: torch.Tensor, max_new_tokens: int, method: str = "dynamic", *,
                      repeats: int = 3, warmup: int = 1, warmup_tokens: int = 32, compiled_step=None,
                      progress: bool = True) -> list[list[float]]:
    """Seconds of every step (the prefill first) of `repeats` greedy generations of max_new_tokens tokens.

    `warmup` untimed generations of min(max_new_tokens, warmup_tokens) tokens come first (they also compile
    `compiled_step`). method: "uncached", "dynamic", "static", "static-fixed" (fixed_shape_decode_step,
    eager) or "static-compiled" (needs compiled_step). The last step attends over T_prompt + max_new_tokens - 1.
    """
    if method not in METHODS + ("static-fixed",):
        raise ValueError(f"method must be one of {METHODS + ('static-fixed',)}, got {method!r}")
    if method == "static-compiled" and compiled_step is None:
        raise ValueError('method "static-compiled" needs compiled_step=compile_decode_step(...)')
    B, T_prompt = input_ids.shape
    if max_new_tokens < 1 or T_prompt + max_new_tokens - 1 > model.config.n_positions:
        raise ValueError(f"need 1 <= max_new_tokens and T_prompt + max_new_tokens - 1 <= n_positions "
                         f"({model.config.n_positions}); got T_prompt={T_prompt}, max_new_tokens={max_new_tokens}")
    device = input_ids.device
    fixed = None
    if method in ("static-fixed", "static-compiled"):  # one cache for all runs: fixed shapes and addresses
        fixed = FixedShapeKVCache(model.config, B, T_prompt + max_new_tokens - 1,
                                  dtype=model.lm_head.weight.dtype, device=device)
    n_warm = min(max_new_tokens, warmup_tokens)
    runs = []
    with tqdm(total=warmup * n_warm + repeats * max_new_tokens, desc=f"{method} B={B}", disable=not progress,
              leave=False) as bar:
        for i in range(warmup + repeats):
            n = n_warm if i < warmup else max_new_tokens
            synchronize(device)
            clock = StepClock(device, on_step=bar.update)
            clock.mark()
            _greedy_run(model, input_ids, n, method, clock, compiled_step, fixed)
            intervals = clock.intervals()
            if i >= warmup:
                runs.append(intervals)
    return runs


def interleaved_generations(model: GPT2, input_ids: torch.Tensor, max_new_tokens: int, methods: tuple[str, ...], *,
                            repeats: int = 3, warmup: int = 1, compiled_step=None,
                            progress: bool = True) -> dict[str, list[list[float]]]:
    """`timed_generations` of every method, the methods taking turns within each repeat (after every method's
    warm-up), so that load drifting over a long sweep hits them alike: {method: runs}."""
    runs = {m: [] for m in methods}
    for r in range(repeats):
        for m in methods:
            runs[m] += timed_generations(model, input_ids, max_new_tokens, m, repeats=1,
                                         warmup=warmup if r == 0 else 0, compiled_step=compiled_step,
                                         progress=progress)
    return runs


def step_records(model: GPT2, runs: list[list[float]], method: str, input_ids: torch.Tensor) -> list[Measurement]:
    """Per-step medians over runs: one "prefill" record, then one "per_token" record per T_total."""
    B, T_prompt = input_ids.shape
    base = dict(method=method, batch_size=B, dtype=dtype_name(model))
    steps = list(zip(*runs))  # steps[i]: the samples of step i
    fixed_slots = T_prompt + len(steps) - 1 if method.startswith("static-") else None
    records = [summarize(list(steps[0]), sweep="prefill", context=T_prompt, tokens=1, **base)]
    for i, samples in enumerate(steps[1:], start=1):
        kv_tokens = fixed_slots or T_prompt + i  # a fixed-shape step reads every slot of its buffer
        nbytes = NAN if method == "uncached" else bytes_per_decode_step(model, kv_tokens, B)
        records.append(summarize(list(samples), sweep="per_token", context=T_prompt + i, tokens=1, **base,
                                 bytes_per_step=nbytes))
    return records


def length_records(model: GPT2, runs: list[list[float]], method: str, input_ids: torch.Tensor,
                   new_token_counts: list[int], sweep: str = "length") -> list[Measurement]:
    """Total seconds of the first N tokens of each run (prefill included), for every N that the runs cover."""
    B, T_prompt = input_ids.shape
    records = []
    for n in new_token_counts:
        if n > len(runs[0]):
            continue
        mean_kv = T_prompt + (n - 1) / 2  # a step's KV grows from T_prompt to T_prompt + n - 1 tokens
        nbytes = NAN if method == "uncached" else bytes_per_decode_step(model, mean_kv, B)
        records.append(summarize([sum(run[:n]) for run in runs], sweep=sweep, method=method, batch_size=B,
                                 context=T_prompt + n - 1, tokens=n, dtype=dtype_name(model), bytes_per_step=nbytes))
    return records


def context_grid(max_context: int, points: int = 12, start: int = 1) -> list[int]:
    """About `points` geometrically spaced context lengths from `start` to max_context, both included."""
    grid = np.geomspace(start, max_context, max(points, 2)).round().astype(int)
    return sorted(set(grid.tolist()) | {max_context})


@torch.inference_mode()
def time_uncached_forward(model: GPT2, contexts: list[int], *, batch_size: int = 1, repeats: int = 3,
                          warmup: int = 1, progress: bool = True) -> list[Measurement]:
    """The uncached decode step at each T_total in `contexts`: one forward of T_total tokens, last logits only.

    Sampling lengths replaces generating up to 1024 tokens without a cache, which would run ~1000 such
    forwards of growing length (a 1024-token forward of GPT-2 small alone takes seconds on a CPU).
    """
    if max(contexts) > model.config.n_positions or min(contexts) < 1:
        raise ValueError(f"contexts must lie in [1, {model.config.n_positions}], got {min(contexts)}..{max(contexts)}")
    device = model.lm_head.weight.device
    records = []
    for t in tqdm(contexts, desc="uncached forwards", disable=not progress, leave=False):
        ids = random_prompt(model, batch_size, t, seed=t)
        samples = measure(lambda: model(ids, logits_to_keep=1), device, repeats, warmup)
        records.append(summarize(samples, sweep="per_token", method="uncached", batch_size=batch_size, context=t,
                                 tokens=1, dtype=dtype_name(model)))
    return records


def estimate_uncached_totals(per_token: list[Measurement], new_token_counts: list[int], prompt_len: int,
                             batch_size: int = 1) -> list[Measurement]:
    """Total uncached generation time for each N, summed from sampled forwards (status "estimated").

    Uncached generation of N tokens runs forwards over T_prompt, T_prompt + 1, ..., T_prompt + N - 1 tokens;
    each one's time is interpolated between the sampled lengths.
    """
    by_context = {r.context: r for r in per_token
                  if r.sweep == "per_token" and r.method == "uncached" and r.status == "ok"}
    if not by_context:
        raise ValueError("per_token holds no uncached per_token records to sum")
    pts = sorted(by_context.items())
    xs = [c for c, _ in pts]
    records = []
    for n in new_token_counts:
        lengths = np.arange(prompt_len, prompt_len + n)
        if lengths[-1] > xs[-1] or lengths[0] < xs[0]:
            continue
        total = {f: float(np.interp(lengths, xs, [getattr(r, f) for _, r in pts]).sum())
                 for f in ("median_s", "min_s", "max_s", "q1_s", "q3_s")}
        records.append(Measurement(sweep="length", method="uncached", batch_size=batch_size,
                                   context=prompt_len + n - 1, tokens=n, dtype=pts[0][1].dtype,
                                   repeats=pts[0][1].repeats, status="estimated", **total))
    return records


def per_token_latency_sweep(model: GPT2, *, context_len: int | None = None, prompt_len: int = 16,
                            methods: tuple[str, ...] = ("dynamic", "static"), uncached_points: int = 12,
                            new_token_counts: list[int] | None = None, repeats: int = 3, warmup: int = 1,
                            compiled_step=None, progress: bool = True) -> list[Measurement]:
    """Seconds per decode step against T_total, up to context_len (default: min(1024, n_positions)).

    Cached methods: every step of real generations whose last step attends over context_len tokens, plus
    "length" records (total time of the first N tokens, for N in new_token_counts) from the same runs.
    Uncached: one forward per length on a geometric grid of `uncached_points` (see time_uncached_forward).
    """
    context_len = context_len or min(1024, model.config.n_positions)
    if "uncached" in methods:
        raise ValueError('"uncached" is sampled by uncached_points (one forward per length), not a method here')
    if not 1 <= prompt_len < context_len:
        raise ValueError(f"need 1 <= prompt_len < context_len, got {prompt_len} and {context_len}")
    ids = random_prompt(model, 1, prompt_len)
    new_tokens = context_len - prompt_len + 1
    records: list[Measurement] = []
    all_runs = interleaved_generations(model, ids, new_tokens, methods, repeats=repeats, warmup=warmup,
                                       compiled_step=compiled_step, progress=progress)
    for method, runs in all_runs.items():
        records += step_records(model, runs, method, ids) + length_records(model, runs, method, ids,
                                                                           new_token_counts or [])
    if uncached_points:
        records += time_uncached_forward(model, context_grid(context_len, uncached_points), repeats=repeats,
                                         warmup=warmup, progress=progress)
    return records


def _guarded(fn: Callable[[], list[Measurement]], **oom_fields) -> list[Measurement]:
    """fn()'s records, or one "oom" record if the GPU ran out of memory (the sweep then goes on)."""
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        return [oom_record(**oom_fields)]


def generation_sweep(model: GPT2, *, sweep: str, batch_sizes: list[int] = (1,), new_tokens: int = 32,
                     prompt_len: int = 16, methods: tuple[str, ...] = ("dynamic", "static"), repeats: int = 3,
                     warmup: int = 1, compiled_step=None, progress: bool = True) -> list[Measurement]:
    """Total time and tokens/s of whole generations (new_tokens per row) for every batch size and method, the
    methods taking turns within each repeat.

    Each batch size is guarded: a CUDA out-of-memory error gives "oom" records, not a crash.
    """
    records = []
    for B in batch_sizes:
        ids = random_prompt(model, B, prompt_len)

        try:  # the methods take turns within each repeat
            runs = interleaved_generations(model, ids, new_tokens, tuple(methods), repeats=repeats, warmup=warmup,
                                           compiled_step=compiled_step, progress=progress)
        except torch.cuda.OutOfMemoryError:
            records += [oom_record(sweep=sweep, method=m, batch_size=B, context=prompt_len + new_tokens - 1,
                                   tokens=new_tokens, dtype=dtype_name(model)) for m in methods]
            continue
        records += [r for m, m_runs in runs.items()
                    for r in length_records(model, m_runs, m, ids, [new_tokens], sweep=sweep)]
    return records


def batch_size_sweep(model: GPT2, batch_sizes: list[int], **kwargs) -> list[Measurement]:
    """Tokens/s of cached generation against batch size (see generation_sweep for the arguments)."""
    return generation_sweep(model, sweep="batch", batch_sizes=batch_sizes, **kwargs)


def dtype_sweep(model: GPT2, dtypes: list[torch.dtype], *, compile_mode: str | None = None,
                **kwargs) -> list[Measurement]:
    """Tokens/s of cached generation in each dtype (a GPU sweep: fp16/bf16 matmuls on CPU are slow paths).

    With compile_mode, "static-compiled" (fixed_shape_decode_step under torch.compile) joins the methods.
    """
    import copy

    methods = tuple(kwargs.pop("methods", ("dynamic", "static"))) + (("static-compiled",) if compile_mode else ())
    records = []
    for dtype in dtypes:
        def run(dtype=dtype):
            m = copy.deepcopy(model).to(dtype)
            step = compile_decode_step(compile_mode) if compile_mode else None
            return generation_sweep(m, sweep="dtype", methods=methods, compiled_step=step, **kwargs)
        records += _guarded(run, sweep="dtype", method="all", batch_size=1, context=0, tokens=0,
                            dtype=str(dtype).removeprefix("torch."))
    return records
