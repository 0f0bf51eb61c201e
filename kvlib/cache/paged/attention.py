"""Attention over the block pool: the gather (copy every row's K/V out, then one softmax) and, without it, the
online softmax over one block at a time, and block ranges merged by their log-sum-exp (Flash-Decoding).

Shapes: T query tokens of every row packed end to end (varlen), R rows (requests), nh query heads, nkv K/V heads,
g = nh // nkv query heads per K/V head, hs head size, N blocks of S slots in the pool, W blocks per row in the block
table (padded), Tq the most query tokens any row has. One layer's pool: key_cache, value_cache (N, nkv, S, hs),
each block head by head (kvlib.cache.paged.layout).

Row r has seq_lens[r] tokens in the pool (its cached ones and the query tokens, whose K/V were just written) and
q_len = query_start_loc[r + 1] - query_start_loc[r] query tokens, the last q_len of them: query i of the row is at
position seq_lens[r] - q_len + i and sees the keys at positions 0..that position (causal). A decode row has q_len 1.

Online softmax (Milakov & Gimelshein 2018; FlashAttention's Algorithm 1): per query keep the largest score seen m,
the sum of exponentials l and the unnormalised output acc; for each new block of scores s and values V,
    m' = max(m, max s);  acc = acc·e^(m−m') + Σ e^(s−m')·V;  l = l·e^(m−m') + Σ e^(s−m');  m = m'
and at the end out = acc / l, lse = m + log l. No block's scores need to be kept.
Log-sum-exps here are natural logarithms (flash-attn's; FlashInfer's are base 2: convert before merging).
"""
from __future__ import annotations

import math

import torch

from .layout import head_shape, read_slots, token_slots

NEG_INF = float("-inf")


def query_positions(seq_lens: torch.Tensor, query_start_loc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) of each of the T packed query tokens: two (T,) long tensors."""
    q_lens = query_start_loc[1:] - query_start_loc[:-1]  # (R,)
    row = torch.repeat_interleave(torch.arange(len(q_lens), device=q_lens.device), q_lens)  # (T,)
    index_in_row = torch.arange(len(row), device=row.device) - query_start_loc[row]  # (T,)
    return row, seq_lens[row] - q_lens[row] + index_in_row  # (T,), (T,)


def pad_queries(query: torch.Tensor, query_start_loc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, nh, hs) packed queries -> (R, Tq, nh, hs) rows (zeros after a row's last query), and the (T,) flat index
    of each packed query in (R * Tq): out_padded.view(R * Tq, ...)[index] packs the results back."""
    q_lens = query_start_loc[1:] - query_start_loc[:-1]  # (R,)
    R, Tq = len(q_lens), int(q_lens.max())
    row = torch.repeat_interleave(torch.arange(R, device=query.device), q_lens)  # (T,)
    index = row * Tq + torch.arange(len(row), device=query.device) - query_start_loc[row]  # (T,)
    padded = query.new_zeros(R * Tq, *query.shape[1:])
    padded[index] = query
    return padded.view(R, Tq, *query.shape[1:]), index  # (R, Tq, nh, hs), (T,)


def check_paged_inputs(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc) -> None:
    if query.dim() != 3 or key_cache.dim() != 4 or key_cache.shape != value_cache.shape:
        raise ValueError("query must be (tokens, heads, head_dim) and key_cache, value_cache both "
                         "(num_blocks, kv_heads, block_size, head_dim)")
    if query.shape[-1] != key_cache.shape[-1] or query.shape[1] % key_cache.shape[1]:
        raise ValueError(f"query heads {tuple(query.shape[1:])} do not fit the pool's (kv_heads, head_dim) "
                         f"{head_shape(key_cache)}: heads must be a multiple of kv_heads")
    R = len(seq_lens)
    if block_tables.dim() != 2 or block_tables.shape[0] != R or query_start_loc.shape != (R + 1,):
        raise ValueError(f"block_tables must be (rows, width) and query_start_loc (rows + 1,) for {R} rows")
    if int(query_start_loc[-1]) != query.shape[0]:
        raise ValueError(f"query_start_loc ends at {int(query_start_loc[-1])}, the query has {query.shape[0]} tokens")


def gather_paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                           scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The gather path, the reference: copy each row's K/V out of the pool into a (R, T_k, nkv, hs) tensor padded to
    the longest row, then one masked softmax. Returns out (T, nh, hs) and its log-sum-exp (T, nh)."""
    check_paged_inputs(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc)
    N, nkv, S, hs = key_cache.shape
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    T_k = int(seq_lens.max())
    key_pos = torch.arange(T_k, device=query.device)  # (T_k,)
    slots = token_slots(block_tables, key_pos, S)  # (R, T_k): where each row's token lives in the pool
    keys = read_slots(key_cache, slots)  # (R, T_k, nkv, hs): the copy
    values = read_slots(value_cache, slots)
    q, index = pad_queries(query, query_start_loc)  # (R, Tq, nh, hs)
    R, Tq, nh, _ = q.shape
    q = q.view(R, Tq, nkv, nh // nkv, hs)  # (R, Tq, nkv, g, hs)
    scores = torch.einsum("rqkgd,rskd->rkgqs", q, keys) * scale  # (R, nkv, g, Tq, T_k)
    row, pos = query_positions(seq_lens, query_start_loc)
    q_pos = torch.full((R * Tq,), -1, device=query.device)
    q_pos[index] = pos
    visible = key_pos <= q_pos.view(R, 1, 1, Tq, 1)  # (R, 1, 1, Tq, T_k); padding queries see nothing
    scores = scores.masked_fill(~visible, NEG_INF)
    lse = torch.logsumexp(scores, dim=-1)  # (R, nkv, g, Tq)
    weights = torch.exp(scores - lse.nan_to_num(neginf=0.0)[..., None])  # a row that sees nothing: all 0
    out = torch.einsum("rkgqs,rskd->rqkgd", weights, values)  # (R, Tq, nkv, g, hs)
    return out.reshape(R * Tq, nh, hs)[index], lse.permute(0, 3, 1, 2).reshape(R * Tq, nh)[index]


def merge_attn_states(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor,
                      lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine the attention of one query over two disjoint key sets: out (..., hs), lse (...) natural log.

    out = (e^lse_a · out_a + e^lse_b · out_b) / (e^lse_a + e^lse_b), computed relative to m = max(lse_a, lse_b).
    A side that saw no key has lse = -inf and out 0; if both did, m = -inf and e^(lse − m) = e^(−inf + inf) = NaN:
    the merge subtracts 0 instead (flashinfer #4051), so the result stays out 0, lse -inf.
    """
    m = torch.maximum(lse_a, lse_b)
    m = torch.where(m == NEG_INF, 0.0, m)
    w_a, w_b = torch.exp(lse_a - m), torch.exp(lse_b - m)  # (...)
    total = w_a + w_b
    out = (out_a * w_a[..., None] + out_b * w_b[..., None]) / torch.where(total == 0, 1.0, total)[..., None]
    return out, m + torch.log(total)  # log 0 = -inf: an empty result keeps lse -inf (not +inf)


def online_softmax_paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                                   block_tables: torch.Tensor, seq_lens: torch.Tensor,
                                   query_start_loc: torch.Tensor, scale: float | None = None, *,
                                   first_block: int = 0,
                                   last_block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention read block by block from the pool (columns first_block..last_block - 1 of the block table; all
    by default), one online-softmax update per block, every row at once. Returns out (T, nh, hs), lse (T, nh);
    a query that saw no key in the range gets out 0, lse -inf."""
    check_paged_inputs(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc)
    N, nkv, S, hs = key_cache.shape
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    last_block = block_tables.shape[1] if last_block is None else min(last_block, block_tables.shape[1])
    q, index = pad_queries(query, query_start_loc)  # (R, Tq, nh, hs)
    R, Tq, nh, _ = q.shape
    q = q.view(R, Tq, nkv, nh // nkv, hs)  # (R, Tq, nkv, g, hs)
    _, pos = query_positions(seq_lens, query_start_loc)
    q_pos = torch.full((R * Tq,), -1, device=query.device)
    q_pos[index] = pos
    q_pos = q_pos.view(R, 1, 1, Tq, 1)  # padding queries at -1 see nothing
    m = q.new_full((R, nkv, nh // nkv, Tq), NEG_INF)  # running max
    l = q.new_zeros((R, nkv, nh // nkv, Tq))  # running sum of e^(s - m)
    acc = q.new_zeros((R, nkv, nh // nkv, Tq, hs))  # running unnormalised output
    for j in range(first_block, last_block):
        k = key_cache[block_tables[:, j]]  # (R, nkv, S, hs): block j of every row, one block each
        v = value_cache[block_tables[:, j]]
        s = torch.einsum("rqkgd,rksd->rkgqs", q, k) * scale  # (R, nkv, g, Tq, S)
        key_pos = j * S + torch.arange(S, device=query.device)  # (S,)
        s = s.masked_fill(key_pos > q_pos, NEG_INF)  # causal, and nothing past the row's length
        m_new = torch.maximum(m, s.amax(dim=-1))
        m_safe = torch.where(m_new == NEG_INF, 0.0, m_new)  # nothing seen yet: e^(-inf - (-inf)) would be NaN
        p = torch.exp(s - m_safe[..., None])  # (R, nkv, g, Tq, S)
        alpha = torch.exp(m - m_safe)  # rescales what was summed under the old max
        l = l * alpha + p.sum(dim=-1)
        acc = acc * alpha[..., None] + torch.einsum("rkgqs,rksd->rkgqd", p, v)
        m = m_new
    out = acc / torch.where(l == 0, 1.0, l)[..., None]  # (R, nkv, g, Tq, hs)
    lse = m + torch.log(l)  # -inf where nothing was seen
    out = out.permute(0, 3, 1, 2, 4).reshape(R * Tq, nh, hs)[index]
    return out, lse.permute(0, 3, 1, 2).reshape(R * Tq, nh)[index]


def split_paged_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                          block_tables: torch.Tensor, seq_lens: torch.Tensor, query_start_loc: torch.Tensor,
                          scale: float | None = None, *, blocks_per_split: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash-Decoding: the block table cut into ranges of blocks_per_split blocks (vLLM's paged_attention_v2 uses
    512-token ranges), each range's attention computed on its own, then merged by log-sum-exp. Ranges past a row's
    end (or past a query's position) saw no key: the merge must leave them out, not turn them into NaN."""
    if isinstance(blocks_per_split, bool) or not isinstance(blocks_per_split, int) or blocks_per_split < 1:
        raise ValueError(f"blocks_per_split must be an int >= 1, got {blocks_per_split!r}")
    W = block_tables.shape[1]
    out, lse = None, None
    for first in range(0, W, blocks_per_split):
        part = online_softmax_paged_attention(query, key_cache, value_cache, block_tables, seq_lens, query_start_loc,
                                              scale, first_block=first, last_block=first + blocks_per_split)
        out, lse = part if out is None else merge_attn_states(out, lse, *part)
    return out, lse
