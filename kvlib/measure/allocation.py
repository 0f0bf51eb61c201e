"""What keeping tensors alive really costs, measured rather than computed: the check on kvlib.measure.memory's formula.

- storage_bytes, cache_storage_bytes: bytes of the distinct storages behind some tensors, e.g. a cache's keys and
  values, (B, n_kv_head, T, hs) per layer (B batch, T cached tokens, hs head size).
- allocated_bytes: the net bytes the torch allocator hands out while a function runs, on CUDA or CPU.
Neither reads kvlib's own bookkeeping (`cache.nbytes`), so both can check it.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, TypeVar

import torch

T = TypeVar("T")


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind tensors: what keeping them alive really costs.

    A view (a slice, a transpose, one of q/k/v split from a fused projection) keeps its whole storage alive,
    so this can exceed the sum of numel() · element_size().
    """
    sizes: dict[tuple[str, int], int] = {}
    for t in tensors:
        s = t.untyped_storage()
        sizes[(str(t.device), s.data_ptr())] = s.nbytes()
    return sum(sizes.values())


def cache_storage_bytes(cache) -> int:
    """storage_bytes of a kvlib cache's key and value tensors, all layers."""
    return storage_bytes(list(cache.key_cache) + list(cache.value_cache))


def allocated_bytes(fn: Callable[[], T], device: torch.device | str = "cpu") -> tuple[T, int]:
    """Run fn(); return its result and the net bytes the torch allocator handed out meanwhile (frees subtracted).

    CUDA: torch.cuda.memory_allocated after minus before (each block rounded up to a multiple of 512 B).
    CPU: the allocations and frees torch.profiler records with profile_memory=True (exact requested sizes).
    Neither reads kvlib's own bookkeeping, so either can check `cache.nbytes`.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"allocated_bytes measures on cpu or cuda devices, got {device}")
    from torch.profiler import ProfilerActivity, profile

    # Kineto (the profiler's backend) prints start/stop lines on stderr unless its log level is raised; it reads
    # the level once, at the first profile. setdefault: a level the user chose wins.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    return result, sum(event.self_cpu_memory_usage for event in prof.events())
