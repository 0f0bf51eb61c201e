"""Scaled dot-product attention, with and without a KV cache: one function serves both.

Shapes: B batch, nh heads, hs head size, T_new tokens fed in this call, T_total = past + T_new tokens
the keys cover. Without a cache T_new == T_total; with one, T_new is usually 1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def causal_mask(T_new: int, T_total: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (T_new, T_total) mask, True where a query may attend to a key.

    Query row i is the token at absolute position (T_total - T_new) + i, so it sees keys 0..that position.
    Offsetting by the past length is what a cached forward needs; `tril(ones(T_new, T_total))` (no offset)
    is the classic bug: it hides the past from every new token.
    """
    if T_new > T_total:
        raise ValueError(f"T_new ({T_new}) cannot exceed T_total ({T_total})")
    rows = torch.arange(T_new, device=device)[:, None] + (T_total - T_new)  # (T_new, 1) absolute positions
    cols = torch.arange(T_total, device=device)[None, :]  # (1, T_total)
    return cols <= rows  # (T_new, T_total)


def sliding_window_mask(
    T_new: int, T_total: int, window: int, sink_tokens: int = 0, device: torch.device | str | None = None
) -> torch.Tensor:
    """Boolean (T_new, T_total) banded causal mask: the query at position p sees keys p - window < j <= p (its
    last `window` tokens, itself included) and the first `sink_tokens` keys j < sink_tokens (attention sinks).

    Rows are absolute positions (T_total - T_new) + i, as in causal_mask; window >= T_total gives causal_mask.
    """
    check_window(window, sink_tokens)
    if T_new > T_total:
        raise ValueError(f"T_new ({T_new}) cannot exceed T_total ({T_total})")
    rows = torch.arange(T_new, device=device)[:, None] + (T_total - T_new)  # (T_new, 1) absolute positions
    cols = torch.arange(T_total, device=device)[None, :]  # (1, T_total)
    return (cols <= rows) & ((cols > rows - window) | (cols < sink_tokens))  # (T_new, T_total)


def check_window(window: int, sink_tokens: int) -> None:
    """Raise unless window is an int >= 1 and sink_tokens an int with 0 <= sink_tokens < window."""
    for name, value in (("window", window), ("sink_tokens", sink_tokens)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if window < 1:
        raise ValueError(f"window must be >= 1 (the tokens each query sees, itself included), got {window}")
    if not 0 <= sink_tokens < window:
        raise ValueError(f"sink_tokens must be in [0, window) = [0, {window}), got {sink_tokens}")


def eager_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q kᵀ / √hs) v, written out. q: (B, nh, T_new, hs); k, v: (B, nh, T_total, hs).

    attention_mask: boolean, broadcastable to (B, nh, T_new, T_total), True = may attend; None = attend to all
    (right for a single new token, which comes after every cached key).
    """
    scores = (query @ key.transpose(-2, -1)) * (1.0 / math.sqrt(query.size(-1)))  # (B, nh, T_new, T_total)
    if attention_mask is not None:
        # The most negative finite value rather than -inf: a row with every key masked stays finite.
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)  # (B, nh, T_new, T_total), each row sums to 1
    return weights @ value  # (B, nh, T_new, hs)


def sdpa_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The same computation through PyTorch's fused kernel.

    The mask is always passed explicitly: `is_causal=True` aligns the triangle top-left, so with T_new < T_total
    a new token would see only the first keys (the cached-decoding bug).
    """
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)  # (B, nh, T_new, hs)


ATTENTION_FUNCTIONS = {"eager": eager_attention, "sdpa": sdpa_attention}
