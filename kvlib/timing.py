"""Timing GPT-2 decoding fairly: device-synchronized clocks, warm-up discarded, medians with their spread.

Shapes: B batch, T_prompt prompt tokens, T_total tokens a step attends over (cached + new), C channels,
nh heads, hs head size, L layers, V vocabulary, S slots of a fixed-shape cache.

How each curve is measured, and why:
- Cached decoding is timed step by step inside real greedy generations (`timed_generations`): each step's
  seconds at its own T_total, read on the device timeline (CUDA events on a GPU, with no host sync between
  steps; `perf_counter` on a CPU, where ops run synchronously). The total time of the first N tokens is the
  sum of the first N steps of the same run, so one long run gives both curves.
- Uncached decoding is *sampled*: the uncached step that attends over T_total tokens is one forward of the
  whole T_total-token sequence, so `time_uncached_forward` times that forward at a grid of lengths instead of
  generating 1024 tokens without a cache, which costs the sum of ~1000 such forwards (minutes on a CPU).
- The compiled method ("static-compiled") runs `kvlib.compiled`'s fixed-shape decode step (gpt-fast's approach).

Sweeps return lists of `Measurement` (plain data, JSON-ready). A CUDA out-of-memory error inside a sweep is
recorded with status "oom" and the sweep goes on.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .generation import decode_one_token, make_cache
from .compiled import FixedShapeKVCache, compile_decode_step, generate_fixed_shape
from .memory import bytes_per_token_for_config
from .model import GPT2

METHODS = ("uncached", "dynamic", "static", "static-compiled")
NAN = float("nan")
# Peak memory bandwidth (GB/s) from the vendors' datasheets; the first entry whose words all occur in
# torch.cuda.get_device_name() wins, so the specific variants come before the generic names.
PEAK_BANDWIDTH_GBPS: list[tuple[tuple[str, ...], float]] = [
    (("H200",), 4800.0), (("H100", "PCIe"), 2000.0), (("H100", "NVL"), 3900.0), (("H100",), 3350.0),
    (("A100", "80GB", "PCIe"), 1935.0), (("A100", "80GB"), 2039.0), (("A100",), 1555.0), (("L40",), 864.0),
    (("L4",), 300.0), (("A10G",), 600.0),
    (("A10",), 600.0), (("T4",), 320.0), (("V100",), 900.0), (("RTX 4090",), 1008.0), (("RTX 3090",), 936.0),
]


@dataclass
class Measurement:
    """One timed configuration: seconds per timed run, summarised over `repeats` runs (warm-up excluded).

    A run generates `tokens` tokens per row (1 for a single decode step or forward) for `batch_size` rows.
    status: "ok"; "oom" (CUDA out of memory, times NaN); "estimated" (summed from sampled forwards, not timed).
    """

    sweep: str  # "per_token", "prefill", "length", "batch", "dtype", "headline", "floor"
    method: str  # "uncached", "dynamic", "static", "static-compiled", "hf-cached", ...
    batch_size: int
    context: int  # T_total the (last) step attends over
    tokens: int
    dtype: str
    median_s: float = NAN
    min_s: float = NAN
    max_s: float = NAN
    q1_s: float = NAN
    q3_s: float = NAN
    repeats: int = 0
    status: str = "ok"
    bytes_per_step: float = NAN  # weight + KV bytes one decode step reads (NaN where that is not the model)

    @property
    def tokens_per_s(self) -> float:
        return self.batch_size * self.tokens / self.median_s

    @property
    def bandwidth_gbps(self) -> float:
        """Bytes one decode step reads × decode steps per second, in GB/s (gpt-fast's "bandwidth achieved")."""
        return self.bytes_per_step * self.tokens / self.median_s / 1e9

    def as_dict(self) -> dict:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s, "bandwidth_gbps": self.bandwidth_gbps}


def summarize(samples: list[float], **fields) -> Measurement:
    """A Measurement whose median/min/max/quartiles summarise `samples` (seconds)."""
    if not samples:
        raise ValueError("summarize needs at least one sample")
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else samples * 3
    return Measurement(median_s=statistics.median(samples), min_s=min(samples), max_s=max(samples), q1_s=q1,
                       q3_s=q3, repeats=len(samples), **fields)


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work (a no-op on CPU, where every op has finished when it returns)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Timestamps on the device timeline: CUDA events on a GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device | str, on_step: Callable[[int], object] | None = None) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.marks: list = []
        self.on_step = on_step  # called with 1 at every mark after the first (a progress bar's update)

    def mark(self) -> None:
        if self.on_step is not None and self.marks:
            self.on_step(1)
        if self.cuda:  # recorded in stream order: no host sync, so steps run back to back as in real use
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        """Seconds between consecutive marks (waits for the last GPU event first)."""
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def measure(fn: Callable[[], object], device: torch.device | str, repeats: int = 5, warmup: int = 1) -> list[float]:
    """Seconds of `repeats` calls of fn, after `warmup` untimed calls; the device is synchronized around each."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    samples = []
    for i in range(warmup + repeats):
        synchronize(device)
        clock = StepClock(device)
        clock.mark()
        fn()
        clock.mark()
        if i >= warmup:
            samples.append(clock.intervals()[0])
    return samples


def oom_record(**fields) -> Measurement:
    """The record of a configuration that ran out of GPU memory; frees the allocator's cache for the next one."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return Measurement(status="oom", **fields)


def dtype_name(model: GPT2) -> str:
    """The model's dtype as plain text ("float32"), for records and file names."""
    return str(model.lm_head.weight.dtype).removeprefix("torch.")


def random_prompt(model: GPT2, batch_size: int, length: int, seed: int = 0) -> torch.Tensor:
    """(B, T_prompt) random token ids on the model's device, the same for a given seed on every machine."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch_size, length), generator=g)
    return ids.to(model.lm_head.weight.device)


# ---- bytes a decode step reads, and the device's peak bandwidth -------------------------------------------

def weight_bytes(model: GPT2) -> int:
    """Bytes of the weights one decode step streams: every parameter once (wte, tied to the LM head, once),
    except wpe, of which a step reads one row."""
    wpe = model.transformer.wpe.weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not wpe)


def bytes_per_decode_step(model: GPT2, kv_tokens: float, batch_size: int = 1) -> float:
    """Weights + the K/V of `kv_tokens` tokens per row, which a cached decode step reads (weights once per batch)."""
    dtype = model.lm_head.weight.dtype
    return weight_bytes(model) + batch_size * kv_tokens * bytes_per_token_for_config(model.config, dtype)


def peak_bandwidth_gbps(device_name: str) -> float | None:
    """Datasheet peak memory bandwidth of a GPU named like torch.cuda.get_device_name(), or None if unknown."""
    for words, gbps in PEAK_BANDWIDTH_GBPS:
        if all(w in device_name for w in words):
            return gbps
    return None


def measure_read_bandwidth(device: torch.device | str, nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """Achieved read bandwidth (GB/s) of summing an fp32 tensor of `nbytes`: a measured "peak" where no
    datasheet figure applies (a CPU)."""
    x = torch.ones(nbytes // 4, device=device)
    return nbytes / statistics.median(measure(x.sum, device, repeats=repeats, warmup=1)) / 1e9


# ---- timing generations step by step ---------------------------------------------------------------------

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


# ---- sweeps ----------------------------------------------------------------------------------------------

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
    for method in methods:
        runs = timed_generations(model, ids, new_tokens, method, repeats=repeats, warmup=warmup,
                                 compiled_step=compiled_step, progress=progress)
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
    """Total time and tokens/s of whole generations (new_tokens per row) for every batch size and method.

    Each (batch size, method) is guarded: a CUDA out-of-memory error gives an "oom" record, not a crash.
    """
    records = []
    for B in batch_sizes:
        ids = random_prompt(model, B, prompt_len)
        for method in methods:
            def run(method=method, ids=ids):
                runs = timed_generations(model, ids, new_tokens, method, repeats=repeats, warmup=warmup,
                                         compiled_step=compiled_step, progress=progress)
                return length_records(model, runs, method, ids, [new_tokens], sweep=sweep)
            records += _guarded(run, sweep=sweep, method=method, batch_size=B, context=prompt_len + new_tokens - 1,
                                tokens=new_tokens, dtype=dtype_name(model))
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


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:  # views only relabel memory; everything else is a kernel on a GPU
            self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


@torch.inference_mode()
def count_decode_ops(model: GPT2, context: int = 16) -> list[str]:
    """Names of the non-view ATen ops one cached decode step runs at T_total = context (≈ GPU kernel launches)."""
    ids = random_prompt(model, 1, context - 1)
    cache = make_cache(model, "dynamic", 1, context)
    token = model(ids, cache, logits_to_keep=1)[:, -1].argmax(-1)
    with _OpCounter() as counter:
        decode_one_token(model, token, cache)
    return counter.ops
