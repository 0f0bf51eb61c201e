"""A compile-friendly, fixed-shape static decode (the gpt-fast approach).

Every decode step has the same shapes, so `torch.compile` builds one graph (and, with mode="reduce-overhead", one
CUDA graph) for all of them. The price (REFERENCES trap 4): each step attends over all S slots of the buffer,
unfilled ones masked out, so its cost follows S, not the tokens cached.

Shapes: B batch, T_prompt prompt tokens, T_new tokens fed, C channels, nh heads, hs head size, V vocabulary,
S slots of the fixed-shape cache.
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..config import GPT2Config
from ..model.gpt2 import GPT2


class StepMarker(Protocol):
    """Anything with a mark() called after the prefill and after every step (kvlib.measure.timing.StepClock is one)."""

    def mark(self) -> None: ...


class FixedShapeKVCache:
    """(B, nh, S, hs) buffers whose `update` writes at the positions in `input_pos` and returns the WHOLE buffer.

    Same shapes at every step, so one compiled graph serves them all; the price (REFERENCES trap 4): each step
    attends over all S slots, unfilled ones masked out, so its cost follows S, not the tokens cached.
    """

    def __init__(self, config: GPT2Config, batch_size: int, max_seq_len: int, *, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        shape = (batch_size, config.n_kv_head, max_seq_len, config.head_dim)  # (B, nh, S, hs)
        self.key_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.value_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.max_seq_len = max_seq_len
        self.input_pos = torch.zeros(1, dtype=torch.long, device=device)  # (T_new,), set by fixed_shape_forward
        for t in self.key_cache + self.value_cache:
            torch._dynamo.mark_static_address(t)  # fixed addresses: CUDA graphs may then update them in place

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int):
        """Write (B, nh, T_new, hs) states at `input_pos`; return the (B, nh, S, hs) buffers."""
        self.key_cache[layer_idx].index_copy_(2, self.input_pos, key_states)
        self.value_cache[layer_idx].index_copy_(2, self.input_pos, value_states)
        return self.key_cache[layer_idx], self.value_cache[layer_idx]


def fixed_shape_forward(model: GPT2, input_ids: torch.Tensor, input_pos: torch.Tensor,
                        cache: FixedShapeKVCache) -> torch.Tensor:
    """Last-position logits (B, V) for input_ids (B, T_new) at positions input_pos (T_new,).

    Runs the model's own blocks (same attention code); only the mask differs: query i sees the slots up to
    its position, over the whole buffer. No Python int depends on the position, so nothing recompiles.
    """
    tr = model.transformer
    cache.input_pos = input_pos
    slots = torch.arange(cache.max_seq_len, device=input_pos.device)
    mask = slots[None, :] <= input_pos[:, None]  # (T_new, S): causal, unfilled slots hidden
    x = tr.wte(input_ids) + tr.wpe(input_pos)  # (B, T_new, C)
    for block in tr.h:
        x = block(x, mask, cache)  # (B, T_new, C)
    return model.lm_head(tr.ln_f(x[:, -1]))  # (B, V)


def fixed_shape_decode_step(model: GPT2, token: torch.Tensor, input_pos: torch.Tensor,
                            cache: FixedShapeKVCache) -> torch.Tensor:
    """Feed one token per row (B,) at position input_pos (1,); return its logits (B, V). The function to compile."""
    return fixed_shape_forward(model, token[:, None], input_pos, cache)


def compile_decode_step(mode: str | None = "reduce-overhead", backend: str = "inductor", fullgraph: bool = True):
    """torch.compile of `fixed_shape_decode_step` (gpt-fast: mode="reduce-overhead" replays a CUDA graph).

    Each new buffer size, batch or dtype compiles once more (dynamic=False); the limit on recompilations is raised
    so that a benchmark's many configurations never fall back to eager without saying so."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return torch.compile(fixed_shape_decode_step, mode=mode, backend=backend, fullgraph=fullgraph, dynamic=False)


@torch.inference_mode()
def generate_fixed_shape(model: GPT2, input_ids: torch.Tensor, max_new_tokens: int, *, step=None,
                         cache: FixedShapeKVCache | None = None, clock: StepMarker | None = None) -> torch.Tensor:
    """Greedy (B, T_prompt + max_new_tokens) through a FixedShapeKVCache: an eager prefill, then `step`
    (fixed_shape_decode_step or its compiled form) per token. clock.mark() follows the prefill and every step.

    Pass the same `cache` to every call when `step` is compiled: new buffers would mean new addresses, and a
    CUDA graph would be recorded again. Old contents need no clearing: slots past a position are masked.
    """
    B, T_prompt = input_ids.shape
    device = input_ids.device
    if cache is None:
        cache = FixedShapeKVCache(model.config, B, min(T_prompt + max_new_tokens, model.config.n_positions),
                                  dtype=model.lm_head.weight.dtype, device=device)
    needed = T_prompt + max_new_tokens - 1  # the last token is sampled, never fed back
    if needed > cache.max_seq_len or cache.key_cache[0].shape[0] != B:
        raise ValueError(f"{B} rows of {T_prompt} prompt + {max_new_tokens} new tokens need {needed} slots per row; "
                         f"the cache has {cache.key_cache[0].shape[0]} rows of {cache.max_seq_len}")
    step = step or fixed_shape_decode_step
    tokens = [fixed_shape_forward(model, input_ids, torch.arange(T_prompt, device=device), cache).argmax(-1)]
    if clock:
        clock.mark()
    input_pos = torch.tensor([T_prompt], device=device)
    for _ in range(max_new_tokens - 1):
        # argmax makes a fresh (B,) tensor: a CUDA graph's logits are overwritten by its next replay.
        tokens.append(step(model, tokens[-1], input_pos, cache).argmax(-1))
        input_pos += 1  # in place: the compiled step sees the same input tensor every time
        if clock:
            clock.mark()
    return torch.cat([input_ids, torch.stack(tokens, dim=1)], dim=1)
