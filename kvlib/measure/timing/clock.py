"""Timing primitives: a device-synchronized clock, measurements with their spread, bytes a decode step reads.

Shapes: B batch, T_total tokens a step attends over (cached + new), C channels, L layers, V vocabulary.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ...model.generation import decode_one_token, make_cache
from ..memory import bytes_per_token_for_config
from ...model.gpt2 import GPT2


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
    """Achieved read bandwidth (GB/s) over `nbytes` of fp32, far beyond the caches: a measured "peak" where no
    datasheet figure applies (a CPU). The faster of two streaming kernels, since either may fall short of what
    the memory delivers: a sum over a vector, and a matrix-vector product over an (n, n) matrix (the kind of
    pass a batch-1 decode step makes)."""
    x = torch.ones(nbytes // 4, device=device)
    n = int((nbytes // 4) ** 0.5)
    W, v = x[: n * n].view(n, n), torch.ones(n, device=device)  # (n, n), (n,)
    best = min(statistics.median(measure(x.sum, device, repeats=repeats, warmup=1)),
               statistics.median(measure(lambda: torch.mv(W, v), device, repeats=repeats, warmup=1))
               * nbytes / (4 * n * n))  # the product reads n·n of the nbytes / 4 values: scale its time
    return nbytes / best / 1e9


def measure_copy_bandwidth(device: torch.device | str, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Achieved device-to-device copy rate (GB/s, bytes read + bytes written) of one `nbytes` tensor into
    another: the practical ceiling a memory-bound step can approach, beside the datasheet's peak."""
    src = torch.ones(nbytes // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / statistics.median(measure(lambda: dst.copy_(src), device, repeats=repeats, warmup=2)) / 1e9


def measure_matmul_gflops(device: torch.device | str, dtype: torch.dtype = torch.float32, n: int = 1024,
                          repeats: int = 5) -> float:
    """Achieved GFLOP/s of one (n, n) @ (n, n) product, the best of `repeats`: the arithmetic ceiling that, with the
    bandwidth, places the ridge point (FLOP per byte) between memory-bound and compute-bound work."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / min(measure(lambda: a @ b, device, repeats=repeats, warmup=2)) / 1e9


def measure_launch_overhead_us(device: torch.device | str, launches: int = 2000, repeats: int = 5) -> float:
    """Microseconds per op of a long run of tiny in-place adds on a 1-element tensor: on a GPU, what the host
    spends launching one kernel (the GPU finishes each long before the next is issued); on a CPU, an op's
    dispatch cost. An eager decode step of k ops cannot take less than about k times this."""
    x = torch.zeros(1, device=device)

    def run():
        for _ in range(launches):
            x.add_(1.0)

    return 1e6 * statistics.median(measure(run, device, repeats=repeats, warmup=1)) / launches


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
