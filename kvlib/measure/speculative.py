"""Measuring speculative decoding (notebook 09): V(k), what one cached forward over k new tokens costs relative to
one token; interleaved wall times of whole decoders; and the speedup those predict for an acceptance rate α.

Each verification is timed on the same context: the forward writes k tokens' K/V and the cache is cropped back
(speculative decoding's own rollback), so every repeat sees the same T cached tokens. Shapes: k new tokens per
forward, T cached tokens.
"""
from __future__ import annotations

import statistics
from typing import Callable

import torch

from ..cache.contiguous import DynamicKVCache
from ..model.gpt2 import GPT2
from ..model.speculative import expected_tokens_per_round
from .timing.clock import measure


@torch.inference_mode()
def forward_seconds(model: GPT2, ks: list[int], *, context: int = 64, repeats: int = 7,
                    seed: int = 0) -> dict[int, list[float]]:
    """Seconds of one cached forward over k new tokens after `context` cached ones, for each k in ks: `repeats`
    samples each, the ks interleaved within every repeat (a slow moment then hits them all), after a warm-up."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, context + max(ks)), generator=g)
    cache = DynamicKVCache()
    model(ids[:, :context], cache, logits_to_keep=1)

    def forward(k: int) -> None:
        model(ids[:, context:context + k], cache, logits_to_keep=k)  # a verification: logits at all k positions
        cache.crop(context)

    return interleaved_seconds({k: lambda k=k: forward(k) for k in ks}, repeats, warmup=2)


def verification_cost(samples: dict[int, list[float]]) -> dict[int, float]:
    """V(k) = median seconds of a k-token forward / median seconds of a one-token forward."""
    one = statistics.median(samples[1])
    return {k: statistics.median(s) / one for k, s in samples.items()}


def interleaved_seconds(fns: dict[str, Callable[[], object]], repeats: int = 3,
                        warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each fn, `repeats` samples each, the fns taking turns within every repeat, after warm-up calls."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name] += measure(fn, "cpu", repeats=1, warmup=0)
    return samples


def predicted_speedup(alpha: float, gamma: int, v: float, c: float) -> float:
    """Leviathan et al.'s walltime gain E(α, γ) / (γ·c + 1) with the verification's measured cost V(γ + 1) in
    place of 1: E(α, γ) / (V(γ + 1) + γ·c), c the cost of a draft step relative to a one-token target forward."""
    return expected_tokens_per_round(alpha, gamma) / (v + gamma * c)
