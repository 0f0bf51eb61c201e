"""Look inside a forward pass: the K/V it computes, and how many token positions each forward processes.

Shapes: B batch, L layers, nh heads, hs head size, T tokens fed to the forward.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch

from ..cache.contiguous import DynamicKVCache
from ..model.gpt2 import GPT2


@torch.no_grad()
def record_kv(model: GPT2, input_ids: torch.Tensor) -> DynamicKVCache:
    """The keys and values of every layer and position that an uncached forward over input_ids (B, T) computes.

    A fresh cache starts empty, so the forward it rides along is the uncached one (positions 0..T-1, causal mask
    over all T tokens); the cache merely keeps the K/V that would otherwise be thrown away. Read them from
    `.key_cache[layer]` / `.value_cache[layer]`, each (B, nh, T, hs).
    """
    if not isinstance(model, GPT2):
        raise TypeError(f"model must be a kvlib.GPT2, got {type(model).__name__}")
    cache = DynamicKVCache()
    model(input_ids, cache, logits_to_keep=1)  # the logits are not needed, only the K/V left in the cache
    return cache


class PrefixComparison(NamedTuple):
    max_abs_diff: float  # largest |after - before| over every layer, K and V, shared position
    allclose: bool  # every element within atol + rtol * |before|
    identical: bool  # bit for bit


def compare_prefix(before: DynamicKVCache, after: DynamicKVCache, *, rtol: float = 1e-5, atol: float = 1e-5
                   ) -> PrefixComparison:
    """Compare the K/V `before` holds (T positions) with the first T positions of `after`, in every layer.

    Use it on two `record_kv` results, the second over a longer sequence, to check that appending tokens
    leaves the K/V of earlier tokens unchanged (up to float rounding: a longer input can change the order
    of the sums inside a matmul).
    """
    T = before.get_seq_length()
    if len(before) != len(after) or after.get_seq_length() < T:
        raise ValueError(f"`after` must have the same layers and at least the {T} positions of `before`")
    max_diff, close, identical = 0.0, True, True
    for old, new in zip(before.key_cache + before.value_cache, after.key_cache + after.value_cache):
        new = new[:, :, :T]  # (B, nh, T, hs): the positions both hold
        max_diff = max(max_diff, (new - old).abs().max().item())
        close = close and torch.allclose(new, old, rtol=rtol, atol=atol)
        identical = identical and torch.equal(new, old)
    return PrefixComparison(max_diff, close, identical)


@contextmanager
def count_positions(model: GPT2) -> Iterator[list[int]]:
    """Record T_new, the token positions fed in, of every forward of `model` inside the `with` block.

    >>> with count_positions(model) as per_forward:
    ...     kvlib.generate(model, input_ids, 5)
    >>> per_forward  # e.g. [6, 1, 1, 1, 1]: a 6-token prefill, then one token per cached step

    Every position fed in has its K and V computed in every layer, so this is also the number of K/V rows a
    forward computes per layer.
    """
    if not isinstance(model, GPT2):
        raise TypeError(f"model must be a kvlib.GPT2, got {type(model).__name__}")
    per_forward: list[int] = []

    def hook(module, args, kwargs):
        input_ids = args[0] if args else kwargs["input_ids"]
        per_forward.append(int(input_ids.shape[1]))  # (B, T_new) -> T_new

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield per_forward
    finally:
        handle.remove()  # never leave the hook behind, even when the block raises
