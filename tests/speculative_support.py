"""Shared by the speculative-decoding and rollback tests: small float64 models whose text varies, the five cache
kinds, the K/V a cache holds (in position order), and plain cached greedy decoding through any cache."""
from __future__ import annotations

import torch

import kvlib
from kvlib.cache.paged import PagedKVCache

KINDS = ("dynamic", "static", "paged", "sliding", "quantized")
WINDOW, SINKS, RESIDUAL = 12, 2, 8  # the sliding window and quantized caches of these tests


def varied_gpt2(config: kvlib.GPT2Config, seed: int, scale: float = 20.0) -> kvlib.GPT2:
    """A seeded random GPT-2 in float64 with its matrices scaled up. At GPT-2's own initialisation a small random
    model mostly repeats its last token (the residual stream is that token's embedding), so every drafter would
    agree with it; scaled, its greedy text varies. float64 makes batched verification and one-token decoding agree
    to 1e-15, far from any near-tie of the argmax."""
    model = kvlib.random_gpt2(config, seed=seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "wpe" not in name:
                p.mul_(scale)
    return model.double()


def noisy_copy(model: kvlib.GPT2, noise: float, seed: int) -> kvlib.GPT2:
    """The model with every weight perturbed by noise x its own scale: a draft model that agrees only sometimes."""
    copy = kvlib.GPT2(model.config).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p, q in zip(copy.parameters(), model.parameters()):
            p.copy_(q + noise * q.abs().mean() * torch.randn(q.shape, generator=g, dtype=q.dtype))
    return copy.eval()


def new_cache(kind: str, model: kvlib.GPT2, batch: int, max_len: int):
    """An empty cache of one of KINDS for the model (the window and the full-precision residual both 8+ tokens)."""
    config, dtype = model.config, model.lm_head.weight.dtype
    if kind == "sliding":
        return kvlib.SlidingWindowKVCache(config, window=WINDOW, sink_tokens=SINKS)
    if kind == "quantized":
        return kvlib.QuantizedKVCache(config, 8, group_size=4, residual_length=RESIDUAL)
    if kind == "paged":
        return PagedKVCache(config, batch * (max_len // 4 + 1), 4, dtype=dtype)
    return kvlib.make_cache(model, kind, batch, max_len)


def held_keys(cache, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys (B, nkv, T_held, hs), their positions (T_held,)) of the tokens the cache holds, in position order."""
    n = cache.get_seq_length()
    if isinstance(cache, kvlib.SlidingWindowKVCache):
        positions = cache.kept_positions(n)
        sinks = positions[positions < cache.sink_tokens]
        window = positions[positions >= cache.sink_tokens]
        keys = torch.cat([cache.sink_keys[layer][:, :, sinks], cache.ring_keys[layer][:, :, window % cache.window]], 2)
        return keys, positions
    if isinstance(cache, kvlib.QuantizedKVCache):
        return cache.dequantized(layer)[0], torch.arange(n)
    if isinstance(cache, PagedKVCache):
        pool, S = cache.key_cache[layer], cache.block_size  # (N, nkv, S, hs)
        blocks = torch.tensor([[t[i // S] for i in range(n)] for t in cache.block_tables]).view(-1, n)  # (B, n)
        return pool[blocks, :, torch.arange(n) % S].transpose(1, 2), torch.arange(n)  # (B, nkv, n, hs)
    return cache.key_cache[layer][:, :, :n], torch.arange(n)


@torch.no_grad()
def plain_greedy(model: kvlib.GPT2, input_ids: torch.Tensor, max_new_tokens: int, cache) -> torch.Tensor:
    """Greedy decoding through `cache`: prefill, then one token per step (kvlib.generate's loop, for any cache)."""
    logits, sequence = kvlib.prefill(model, input_ids, cache), input_ids
    for step in range(max_new_tokens):
        token = logits.argmax(dim=-1)  # (B,)
        sequence = torch.cat([sequence, token[:, None]], dim=1)
        if step < max_new_tokens - 1:
            logits = kvlib.decode_one_token(model, token, cache)
    return sequence
