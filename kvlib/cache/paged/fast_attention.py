"""The engine's attention over the block pool, one call per layer for a whole packed step (varlen).

Decode rows (one query each) are attended all at once by `decode_attention`, prefill rows one by one with PyTorch's
fused kernel (their own new K/V, plus their cached prefix read from the pool when they have one). The readable
references it is proven against are in kvlib.cache.paged.attention.

Shapes: T packed query tokens, R rows (the first D decode rows, one query each), nh query heads, nkv K/V heads,
g = nh // nkv, hs head size, N blocks of S slots, W block-table width, I work items.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.fx.experimental._config as shape_config
import torch.nn.functional as F

from ...attention import causal_mask
from .attention import gather_paged_attention, online_softmax_paged_attention, split_paged_attention

ATTENTION_BACKENDS = ("fast", "eager", "online_softmax", "split", "gather")
NEG_INF = float("-inf")


def decode_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                     block_tables: torch.Tensor, seq_lens: torch.Tensor, *, blocks_per_split: int = 8) -> torch.Tensor:
    """One query per row (R, nh, hs) against its row's seq_lens[r] keys in the pool -> (R, nh, hs).

    Flash-Decoding's split, vectorised: the work items are the (row, range of blocks_per_split blocks) pairs that
    hold at least one of the row's keys, so no row is padded to the longest one (at most blocks_per_split - 1
    blocks per row are read past its end, and masked). Each item gives its softmax-weighted values and its
    log-sum-exp, and each row's items are merged by log-sum-exp. Every item sees >= 1 key: no empty partition.
    """
    R, nh, hs = query.shape
    N, S, nkv, _ = key_cache.shape
    P, W = blocks_per_split, block_tables.shape[1]
    num_items = (seq_lens + P * S - 1) // (P * S)  # (R,) ranges per row
    row = torch.repeat_interleave(torch.arange(R, device=query.device), num_items)  # (I,)
    first = torch.arange(len(row), device=query.device) - (torch.cumsum(num_items, 0) - num_items)[row]  # (I,)
    cols = first[:, None] * P + torch.arange(P, device=query.device)  # (I, P) block-table columns of each item
    blocks = block_tables[row[:, None], cols.clamp(max=W - 1)]  # (I, P) physical blocks (past the end: masked)
    I = len(row)
    keys = key_cache[blocks].view(I, P * S, nkv, hs)  # (I, P*S, nkv, hs): one range of one row each
    values = value_cache[blocks].view(I, P * S, nkv, hs)
    q = query.view(R, nkv, nh // nkv, hs)[row]  # (I, nkv, g, hs)
    scores = torch.einsum("ikgd,iskd->ikgs", q, keys) * (1.0 / math.sqrt(hs))  # (I, nkv, g, P*S)
    key_pos = (cols[:, :, None] * S + torch.arange(S, device=query.device)).view(I, 1, 1, P * S)
    scores = scores.masked_fill(key_pos >= seq_lens[row].view(I, 1, 1, 1), NEG_INF)
    m = scores.amax(dim=-1, keepdim=True)  # (I, nkv, g, 1): finite, each item sees a key
    p = torch.exp(scores - m)
    l = p.sum(dim=-1, keepdim=True)
    out = torch.einsum("ikgs,iskd->ikgd", p, values) / l  # (I, nkv, g, hs)
    lse = (m + torch.log(l)).view(I, nh)  # (I, nh)
    if I == R:  # one item per row: nothing to merge
        return out.view(R, nh, hs)
    row_max = torch.full((R, nh), NEG_INF, dtype=lse.dtype, device=lse.device).scatter_reduce_(
        0, row[:, None].expand(I, nh), lse, "amax")  # (R, nh) each row's largest item log-sum-exp
    w = torch.exp(lse - row_max[row])  # (I, nh) each item's share, relative to its row's largest
    total = torch.zeros(R, nh, dtype=w.dtype, device=w.device).index_add_(0, row, w)
    merged = torch.zeros(R, nh, hs, dtype=out.dtype, device=out.device).index_add_(0, row, out.view(I, nh, hs) * w[..., None])
    return merged / total[..., None]


def fused_decode_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """One query per row (R, nh, hs) over its seq_lens[r] keys in the pool -> (R, nh, hs), written for the compiler.

    Read as PyTorch, `key_cache[block_tables]` copies every row's blocks out (the gather). Compiled
    (`compiled_decode_attention`), the indexing fuses into the products that consume it: the generated C++ loop
    loads each key and value from its block in the pool, and nothing of size R x W x S is ever written.
    """
    R, nh, hs = query.shape
    N, S, nkv, _ = key_cache.shape
    W = block_tables.shape[1]
    q = query.view(R, 1, nkv, nh // nkv, hs)  # (R, 1, nkv, g, hs)
    keys = key_cache[block_tables].view(R, W * S, nkv, 1, hs)  # (R, W*S, nkv, 1, hs): read in place once compiled
    values = value_cache[block_tables].view(R, W * S, nkv, 1, hs)
    scores = (q * keys).sum(dim=-1) * (1.0 / math.sqrt(hs))  # (R, W*S, nkv, g)
    key_pos = torch.arange(W * S, device=query.device)
    scores = scores.masked_fill((key_pos[None, :] >= seq_lens[:, None])[:, :, None, None], NEG_INF)
    weights = torch.softmax(scores, dim=1)  # (R, W*S, nkv, g): every row sees >= 1 key
    return (weights[..., None] * values).sum(dim=1).view(R, nh, hs)  # (R, nh, hs)


_compiled = None
_compile_failed: str | None = None  # why torch.compile could not build the kernel here (no C++ compiler, ...)


def compiled_decode_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                              block_tables: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """fused_decode_attention through torch.compile (dynamic shapes: one compilation serves every step). Rows and
    table columns are padded to at least 2, so that a step with one row or one block does not compile again
    (the compiler specialises sizes 0 and 1)."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(fused_decode_attention, dynamic=True, fullgraph=True)
    R, W = block_tables.shape
    if R < 2 or W < 2:
        pad_r, pad_w = max(0, 2 - R), max(0, 2 - W)
        block_tables = F.pad(block_tables, (0, pad_w, 0, pad_r))  # extra rows read block 0, one key, discarded
        seq_lens = F.pad(seq_lens, (0, pad_r), value=1)
        query = F.pad(query, (0, 0, 0, 0, 0, pad_r))
    # No guard on sizes that happen to be equal (duck sizing) or that are 1 (block size 1, one K/V head): one
    # compilation for every step of every engine with this dtype.
    with shape_config.patch(use_duck_shape=False, backed_size_oblivious=True):
        return _compiled(query, key_cache, value_cache, block_tables, seq_lens)[:R]


def fast_decode_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                          block_tables: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
    """The compiled kernel where torch.compile works (it needs a C++ compiler on CPU); otherwise, after one warning,
    the eager Flash-Decoding split (decode_attention): the same result, slower."""
    global _compile_failed
    if _compile_failed is None:
        try:
            return compiled_decode_attention(query, key_cache, value_cache, block_tables, seq_lens)
        except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, say why once
            _compile_failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(f"kvlib: torch.compile could not build the paged decode kernel ({_compile_failed}); "
                          "using the eager one (same results, slower)", RuntimeWarning, stacklevel=2)
    return decode_attention(query, key_cache, value_cache, block_tables, seq_lens)


def prefill_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                      value_cache: torch.Tensor, block_table: torch.Tensor, context_len: int) -> torch.Tensor:
    """One row's n queries (n, nh, hs), its new keys and values (n, nkv, hs) and context_len earlier tokens in the
    pool -> (n, nh, hs). A prompt's first chunk (no context) needs nothing from the pool."""
    n, nh, hs = query.shape
    S, nkv = key_cache.shape[1], key_cache.shape[2]
    if context_len:
        pos = torch.arange(context_len, device=query.device)
        slots = block_table[pos // S] * S + pos % S  # (context_len,)
        key = torch.cat([key_cache.view(-1, nkv, hs)[slots], key])  # (context_len + n, nkv, hs)
        value = torch.cat([value_cache.view(-1, nkv, hs)[slots], value])
    q, k, v = query.transpose(0, 1)[None], key.transpose(0, 1)[None], value.transpose(0, 1)[None]  # (1, heads, ., hs)
    # is_causal aligns the triangle top-left: right only when queries and keys start together (no context).
    mask = causal_mask(n, context_len + n, device=query.device) if context_len else None
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=not context_len, enable_gqa=nh != nkv)
    return out[0].transpose(0, 1)  # (n, nh, hs)


def paged_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                    value_cache: torch.Tensor, block_tables: torch.Tensor, seq_lens: torch.Tensor,
                    query_start_loc: torch.Tensor, *, num_decode_rows: int, query_lens: list[int],
                    context_lens: list[int], backend: str = "fast") -> torch.Tensor:
    """Attention of a packed step whose new K/V (key, value: (T, nkv, hs)) are already in the pool -> (T, nh, hs).
    backend "fast": decode rows at once by the compiled kernel, prefill rows one by one; "eager": the same with
    the eager decode kernel; "online_softmax", "split", "gather": the readable references
    (kvlib.cache.paged.attention) over every row."""
    if backend == "gather":
        return gather_paged_attention(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc)[0]
    if backend == "online_softmax":
        return online_softmax_paged_attention(query, key_cache, value_cache, block_tables, seq_lens,
                                              query_start_loc)[0]
    if backend == "split":
        return split_paged_attention(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc)[0]
    if backend not in ("fast", "eager"):
        raise ValueError(f"backend must be one of {ATTENTION_BACKENDS}, got {backend!r}")
    D = num_decode_rows
    decode = fast_decode_attention if backend == "fast" else decode_attention
    parts = [decode(query[:D], key_cache, value_cache, block_tables[:D], seq_lens[:D])] if D else []
    start = D
    for r in range(D, len(query_lens)):
        end = start + query_lens[r]
        parts.append(prefill_attention(query[start:end], key[start:end], value[start:end], key_cache, value_cache,
                                       block_tables[r], context_lens[r]))
        start = end
    return parts[0] if len(parts) == 1 else torch.cat(parts)  # (T, nh, hs)
