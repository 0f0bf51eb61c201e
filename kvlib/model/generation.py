"""Greedy and sampled generation, with a KV cache (prefill once, then one token per step) or without one
(re-feed the whole sequence every step).

Shapes: B batch, T_prompt prompt tokens, T_new generated tokens, V vocabulary.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..cache.contiguous import DynamicKVCache, KVCache, StaticKVCache
from .forward_inputs import check_input_ids
from .gpt2 import GPT2

CACHE_KINDS = ("dynamic", "static", "paged")
PAGED_BLOCK_SIZE = 16  # cache="paged": vLLM's default block size


def make_cache(model: GPT2, kind: str, batch_size: int, max_seq_len: int) -> KVCache:
    """An empty cache of `kind` ("dynamic", "static" or "paged") matching the model's dtype and device."""
    if getattr(model, "kv_lora_rank", None) is not None:  # latent attention (kvlib.model.mla) caches latents
        return _latent_cache(kind)
    if kind == "dynamic":
        return DynamicKVCache()
    if kind == "static":
        w = model.lm_head.weight
        return StaticKVCache(model.config, batch_size, max_seq_len, dtype=w.dtype, device=w.device)
    if kind == "paged":
        from ..cache.paged import PagedKVCache, blocks_needed

        num_blocks = batch_size * blocks_needed(max_seq_len, PAGED_BLOCK_SIZE)
        w = model.lm_head.weight
        return PagedKVCache(model.config, num_blocks, PAGED_BLOCK_SIZE, dtype=w.dtype, device=w.device)
    raise ValueError(f"cache must be one of {CACHE_KINDS}, got {kind!r}")


def _latent_cache(kind: str):
    """The cache of a latent-attention model: a LatentKVCache, which grows by concatenation ("dynamic")."""
    from ..cache.latent import LatentKVCache

    if kind != "dynamic":
        raise ValueError(f"a latent-attention model caches one latent per token: only cache='dynamic' (a "
                         f"LatentKVCache, grown by concatenation) is implemented for it, got {kind!r}")
    return LatentKVCache()


def top_k_filter(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """logits (..., V) with every token below the k-th largest set to -inf (None or k >= V: unchanged). A tie at
    the border keeps every tied token."""
    if top_k is None or top_k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1): the k-th largest logit
    return logits.masked_fill(logits < kth, float("-inf"))


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token (B,) from last-position logits (B, V): argmax when temperature is 0, else sample."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)  # (B,)
    logits = top_k_filter(logits.float() / temperature, top_k)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


def prefill(
    model: GPT2, input_ids: torch.Tensor, cache: KVCache, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Run the whole prompt (B, T_prompt) once, filling the cache; return last-position logits (B, V)."""
    return model(input_ids, cache, attention_mask=attention_mask, logits_to_keep=1)[:, -1]


def decode_one_token(
    model: GPT2, token: torch.Tensor, cache: KVCache, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Feed one token per row (B,) through the cached model; return its logits (B, V)."""
    return model(token[:, None], cache, attention_mask=attention_mask, logits_to_keep=1)[:, -1]


def generate(
    model: GPT2,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    use_cache: bool = True,
    cache: str = "dynamic",
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Continue input_ids (B, T_prompt); return (B, T_prompt + T_new), prompt included, T_new ≤ max_new_tokens.

    use_cache=False re-feeds the whole sequence every step (the naive loop); otherwise the prompt is prefilled
    into a fresh `cache` ("dynamic" or "static") and each step feeds one token. temperature=0 is greedy.
    A row that emits eos_token_id is finished: later positions get pad_token_id (default: eos_token_id), and
    generation stops when every row is finished. attention_mask (B, T_prompt) marks left padding with 0.
    on_token(tokens (B,)) is called after every step, e.g. to stream text.
    """
    if pad_token_id is None:
        pad_token_id = eos_token_id
    _check_generate_args(model, input_ids, max_new_tokens, use_cache, cache, eos_token_id, pad_token_id, temperature,
                         top_k, attention_mask)
    # inference_mode, not just no_grad: it also skips autograd's per-tensor bookkeeping (version counters, view
    # tracking), a few microseconds on each of the ~200 small ops of a decode step. Tensors made inside it cannot
    # be saved for a later backward, so what leaves the loop is cloned outside it into ordinary tensors.
    with torch.inference_mode():
        sequence = _generate_loop(model, input_ids, max_new_tokens, use_cache, cache, eos_token_id, pad_token_id,
                                  temperature, top_k, generator, attention_mask, on_token)
    return sequence.clone()


def _generate_loop(model, input_ids, max_new_tokens, use_cache, cache, eos_token_id, pad_token_id, temperature,
                   top_k, generator, attention_mask, on_token) -> torch.Tensor:
    B, T_prompt = input_ids.shape
    kv = make_cache(model, cache, B, T_prompt + max_new_tokens) if use_cache else None
    sequence = input_ids
    mask = attention_mask
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    for step in range(max_new_tokens):
        if kv is None:
            logits = model(sequence, attention_mask=mask, logits_to_keep=1)[:, -1]  # recompute everything
        elif step == 0:
            logits = prefill(model, input_ids, kv, mask)
        else:
            logits = decode_one_token(model, sequence[:, -1], kv, mask)  # only the newest token
        token = sample_next_token(logits, temperature, top_k, generator)  # (B,)
        if eos_token_id is not None:
            token = torch.where(finished, torch.full_like(token, pad_token_id), token)
            finished |= token == eos_token_id
        sequence = torch.cat([sequence, token[:, None]], dim=1)  # (B, T_prompt + step + 1)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        if on_token is not None:
            with torch.inference_mode(False):
                on_token(token.clone())  # an ordinary tensor the callback may keep
        if eos_token_id is not None and bool(finished.all()):
            break
    return sequence


def _check_generate_args(model, input_ids, max_new_tokens, use_cache, cache, eos_token_id, pad_token_id, temperature,
                         top_k, attention_mask) -> None:
    if not isinstance(model, GPT2):
        raise TypeError(f"model must be a kvlib.GPT2, got {type(model).__name__}")
    check_input_ids(input_ids, model.config.vocab_size)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    total = input_ids.shape[1] + max_new_tokens
    if total > model.config.n_positions:
        raise ValueError(
            f"prompt ({input_ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) = {total} exceeds the "
            f"model's n_positions={model.config.n_positions}; shorten the prompt or ask for fewer tokens"
        )
    if cache not in CACHE_KINDS:
        raise ValueError(f"cache must be one of {CACHE_KINDS}, got {cache!r}")
    if not isinstance(use_cache, bool):
        raise TypeError(f"use_cache must be True or False, got {use_cache!r}")
    for name, token_id in (("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        if token_id is not None and (isinstance(token_id, bool) or not isinstance(token_id, int)
                                     or not 0 <= token_id < model.config.vocab_size):
            raise ValueError(f"{name} must be None or a token id in [0, {model.config.vocab_size}), got {token_id!r}")
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if attention_mask is not None:
        check_padding_mask(attention_mask, input_ids.shape)


def check_padding_mask(attention_mask: torch.Tensor, shape: torch.Size) -> None:
    """A generation mask must be (B, T_prompt) of 0/1, left-padded (zeros only before a row's first 1)."""
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}")
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(shape)}, got {tuple(attention_mask.shape)}")
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask must hold only 1 (token) and 0 (padding)")
    m = attention_mask.long()
    if not bool(m.any(dim=1).all()):
        raise ValueError("attention_mask has a row of padding only: every prompt needs at least one real token")
    if not bool((m[:, 1:] >= m[:, :-1]).all()):
        raise ValueError(
            "attention_mask must be left-padded (0s before the tokens, then only 1s); right padding would put "
            "new tokens after padding. Pad on the left, e.g. tokenizer.padding_side = 'left'"
        )
