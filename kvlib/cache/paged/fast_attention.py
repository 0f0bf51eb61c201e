"""The engine's attention over the block pool, one call per layer for a whole packed step (varlen).

Decode rows (one query each) are attended all at once by one compiled kernel that reads K/V from their blocks in the
pool (kvlib.cache.paged.decode_kernel), prefill rows one by one with PyTorch's fused kernel (their own new K/V, plus
their cached prefix read from the pool when they have one). The readable references it is proven against are in
kvlib.cache.paged.attention.

Shapes: T packed query tokens, R rows (the first D decode rows, one query each), nh query heads, nkv K/V heads,
g = nh // nkv, hs head size, N blocks of S slots, W block-table width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...attention import causal_mask
from .attention import gather_paged_attention, online_softmax_paged_attention, split_paged_attention
from .decode_kernel import DecodeWork, decode_work, fast_decode_attention
from .layout import read_slots, token_slots

ATTENTION_BACKENDS = ("fast", "online_softmax", "split", "gather")


def gather_decode_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                            block_tables: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """The eager fallback: one query per row (R, nh, hs); every row's keys copied out into a (R, nkv, T_k, hs)
    tensor padded to the longest row, then PyTorch's fused kernel with a padding mask -> (R, nh, hs)."""
    R, nh, hs = query.shape
    nkv, S = key_cache.shape[1:3]
    key_pos = torch.arange(int(seq_lens.max()), device=query.device)  # (T_k,)
    slots = token_slots(block_tables, key_pos, S)  # (R, T_k)
    keys = read_slots(key_cache, slots).transpose(1, 2)  # (R, T_k, nkv, hs) -> (R, nkv, T_k, hs): the copy
    values = read_slots(value_cache, slots).transpose(1, 2)
    mask = (key_pos[None, :] < seq_lens[:, None])[:, None, None]  # (R, 1, 1, T_k)
    out = F.scaled_dot_product_attention(query[:, :, None], keys, values, attn_mask=mask, enable_gqa=nh != nkv)
    return out[:, :, 0]  # (R, nh, hs)


def prefill_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                      value_cache: torch.Tensor, block_table: torch.Tensor, context_len: int) -> torch.Tensor:
    """One row's n queries (n, nh, hs), its new keys and values (n, nkv, hs) and context_len earlier tokens in the
    pool -> (n, nh, hs). A prompt's first chunk (no context) needs nothing from the pool."""
    n, nh, hs = query.shape
    nkv, S = key_cache.shape[1:3]
    if context_len:
        pos = torch.arange(context_len, device=query.device)
        slots = token_slots(block_table, pos, S)  # (context_len,)
        key = torch.cat([read_slots(key_cache, slots), key])  # (context_len + n, nkv, hs)
        value = torch.cat([read_slots(value_cache, slots), value])
    q, k, v = query.transpose(0, 1)[None], key.transpose(0, 1)[None], value.transpose(0, 1)[None]  # (1, heads, ., hs)
    # is_causal aligns the triangle top-left: right only when queries and keys start together (no context).
    mask = causal_mask(n, context_len + n, device=query.device) if context_len else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not context_len, enable_gqa=nh != nkv)
    return out[0].transpose(0, 1)  # (n, nh, hs)


def paged_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                    value_cache: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor,
                    query_start_loc: torch.Tensor, *, num_decode_rows: int, query_lens: list[int],
                    context_lens: list[int], backend: str = "fast",
                    decode: DecodeWork | None = None) -> torch.Tensor:
    """Attention of a packed step whose new K/V (key, value: (T, nkv, hs)) are already in the pool -> (T, nh, hs).
    backend "fast": decode rows at once by the compiled kernel, prefill rows one by one; "online_softmax",
    "split", "gather": the readable references (kvlib.cache.paged.attention) over every row."""
    if backend == "gather":
        return gather_paged_attention(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc)[0]
    if backend == "online_softmax":
        return online_softmax_paged_attention(query, key_cache, value_cache, block_tables, seq_lens,
                                              query_start_loc)[0]
    if backend == "split":
        return split_paged_attention(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc)[0]
    if backend != "fast":
        raise ValueError(f"backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    D = num_decode_rows
    parts = []
    if D:
        decode = decode_work(block_tables[:D], seq_lens[:D], key_cache.shape[2]) if decode is None else decode
        parts.append(fast_decode_attention(query[:D], key_cache, value_cache, seq_lens[:D], decode))
    start = D
    for r in range(D, len(query_lens)):
        end = start + query_lens[r]
        parts.append(prefill_attention(query[start:end], key[start:end], value[start:end], key_cache, value_cache,
                                       block_tables[r], context_lens[r]))
        start = end
    return parts[0] if len(parts) == 1 else torch.cat(parts)  # (T, nh, hs)
