"""The engine's decode attention: every (request, block) pair attended on its own, then each request's blocks merged
by their log-sum-exps (Flash-Decoding with one block per split), compiled so that K/V are read where they live.

Level 1, one work item per (row, block) pair that holds keys of the row: the block's scores s, their max m, the
sum of e^(s - m) l, and the e^(s - m)-weighted values o. Level 2, per row over its items: M = max m_i,
out = Σ e^(m_i - M) o_i / Σ e^(m_i - M) l_i (the log-sum-exp merge, lse_i = m_i + log l_i, written without the log).
Items exist only where a row has keys, so no row is padded to the longest one, and no item is empty: every max is
finite. Level 2 reads a row's items through merge_index (R, W); past a row's last item it reads item 0 with m set to
-inf, whose weight e^(-inf - M) is 0 (M, the row's largest m, is finite).

Read as PyTorch, `key_cache[work.block]` copies the blocks out. Compiled (`compiled_decode_attention`), the
indexing fuses into the sums that consume it: the generated C++ loops load each key and value from its block in
the pool, and nothing of the size of the step's K/V is written. The pool stores each block head by head
(kvlib.cache.paged.layout), so the loops of one (item, head) read one contiguous run of S * hs numbers.

Shapes: R decode rows (one query each), nh query heads, nkv K/V heads, g = nh // nkv, hs head size, N blocks of
S slots (the pool: (N, nkv, S, hs)), W blocks in the longest row, I work items (the rows' blocks,
Σ_r ceil(seq_lens[r] / S)).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.fx.experimental._config as shape_config

from .layout import HEAD_DIMS, head_shape

NEG_INF = float("-inf")


@dataclass
class DecodeWork:
    """One decode step's work items, built once per step and shared by every layer."""
    block: torch.Tensor  # (I,) physical block of item i
    row: torch.Tensor  # (I,) the row it belongs to
    first_pos: torch.Tensor  # (I,) position of the block's first slot in its row: j * S for the row's j-th block
    merge_index: torch.Tensor  # (R, W) the item holding row r's j-th block, -1 past the row's last one


def decode_work(block_tables: torch.Tensor, seq_lens: torch.Tensor, block_size: int) -> DecodeWork:
    """The (row, block) pairs of R decode rows with block_tables (R, W) and seq_lens (R,) keys each."""
    R, W = block_tables.shape
    num_blocks = (seq_lens + block_size - 1) // block_size  # (R,) blocks holding the row's keys
    row = torch.repeat_interleave(torch.arange(R, device=seq_lens.device), num_blocks)  # (I,)
    j = torch.arange(len(row), device=row.device) - (torch.cumsum(num_blocks, 0) - num_blocks)[row]  # (I,)
    merge_index = torch.full((R, W), -1, dtype=torch.long, device=row.device)
    merge_index[row, j] = torch.arange(len(row), device=row.device)
    return DecodeWork(block_tables[row, j], row, j * block_size, merge_index)


def paged_decode_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           seq_lens: torch.Tensor, work: DecodeWork) -> torch.Tensor:
    """One query per row (R, nh, hs) over its seq_lens[r] keys in the pool -> (R, nh, hs)."""
    R, nh, hs = query.shape
    N, nkv, S, _ = key_cache.shape
    # Level 1: each item's block.
    q = query.view(R, nkv, nh // nkv, hs)[work.row][..., None, :]  # (I, nkv, g, 1, hs)
    keys = key_cache[work.block][:, :, None]  # (I, nkv, 1, S, hs): read in place once compiled
    values = value_cache[work.block][:, :, None]
    s = (q * keys).sum(dim=-1) * (1.0 / math.sqrt(hs))  # (I, nkv, g, S)
    key_pos = work.first_pos[:, None] + torch.arange(S, device=query.device)  # (I, S)
    s = s.masked_fill((key_pos >= seq_lens[work.row][:, None])[:, None, None], NEG_INF)  # the row's last block
    m = s.amax(dim=-1)  # (I, nkv, g): finite, an item holds >= 1 key of its row
    p = torch.exp(s - m[..., None])
    l = p.sum(dim=-1)  # (I, nkv, g)
    o = (p[..., None] * values).sum(dim=-2)  # (I, nkv, g, hs)
    # Level 2: each row merges its items; past a row's last item, item 0 stands in with m = -inf (weight 0).
    index = work.merge_index.clamp(min=0)  # (R, W)
    m_rows = m[index].masked_fill((work.merge_index < 0)[..., None, None], NEG_INF)  # (R, W, nkv, g)
    weight = torch.exp(m_rows - m_rows.amax(dim=1, keepdim=True))  # e^(m_i - M): M is the row's largest m
    out = (weight[..., None] * o[index]).sum(dim=1) / (weight * l[index]).sum(dim=1)[..., None]  # (R, nkv, g, hs)
    return out.view(R, nh, hs)


def _kernel(query, key_cache, value_cache, seq_lens, block, row, first_pos, merge_index) -> torch.Tensor:
    return paged_decode_attention(query, key_cache, value_cache, seq_lens, DecodeWork(block, row, first_pos, merge_index))


_compiled = None
_compiled_for: set[tuple] = set()  # (dtype, head layout) the kernel has been compiled for
_compile_failed: str | None = None  # why torch.compile could not build the kernel here (no C++ compiler, ...)


def compiled_decode_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                              seq_lens: torch.Tensor, work: DecodeWork) -> torch.Tensor:
    """paged_decode_attention through torch.compile. Heads and head size are compiled in (fixed loops the compiler
    vectorises); rows, items, blocks per row, pool size and block size stay symbolic, with no guard on sizes that
    happen to be equal (duck sizing): one compilation per model shape and dtype serves every step of every engine.
    A step with one row, one item or one block per row gets a dummy row (1 key in block 0, discarded), because the
    compiler specialises sizes 0 and 1."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(_kernel, dynamic=True, fullgraph=True)
    R, W = work.merge_index.shape
    I = work.block.shape[0]
    # A contiguous query whoever calls: the compiled code guards on strides, and every recompile counts.
    args = [query.contiguous(), seq_lens, work.block, work.row, work.first_pos, work.merge_index]
    with torch.inference_mode():  # inference tensors whoever calls: the compiled code guards on that too
        if R < 2 or I < 2 or W < 2 or not all(t.is_inference() for t in args):
            args = _pad([t.clone() for t in args], R, I, W) if (R < 2 or I < 2 or W < 2) else [t.clone() for t in args]
        query, seq_lens, block, row, first_pos, merge_index = args
        for t, dims in ((query, (1, 2)), (key_cache, HEAD_DIMS), (value_cache, HEAD_DIMS)):
            for d in dims:
                torch._dynamo.mark_static(t, d)
        key = (query.dtype, tuple(query.shape[1:]), head_shape(key_cache), key_cache.is_inference())
        if key in _compiled_for:
            return _compiled(query, key_cache, value_cache, seq_lens, block, row, first_pos, merge_index)[:R]
        # While it compiles: no duck sizing, and room for one compilation per head layout and dtype (the default
        # limit of 8 would send a process that serves many model shapes to the eager fallback).
        with shape_config.patch(use_duck_shape=False, backed_size_oblivious=True), \
                torch._dynamo.config.patch(recompile_limit=64):
            out = _compiled(query, key_cache, value_cache, seq_lens, block, row, first_pos, merge_index)
        _compiled_for.add(key)
        return out[:R]


def _pad(args: list[torch.Tensor], R: int, I: int, W: int) -> list[torch.Tensor]:
    """Append a dummy row with one key in block 0 (one more item) and a column of -1: no size below 2."""
    query, seq_lens, block, row, first_pos, merge_index = args
    query = torch.cat([query, query.new_zeros(1, *query.shape[1:])])
    seq_lens = torch.cat([seq_lens, seq_lens.new_ones(1)])
    block, first_pos = torch.cat([block, block.new_zeros(1)]), torch.cat([first_pos, first_pos.new_zeros(1)])
    row = torch.cat([row, row.new_full((1,), R)])
    merge_index = torch.cat([merge_index, merge_index.new_full((1, W), -1)])
    merge_index[R, 0] = I
    merge_index = torch.cat([merge_index, merge_index.new_full((R + 1, 1), -1)], dim=1)
    return [query, seq_lens, block, row, first_pos, merge_index]


def fast_decode_attention(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                          seq_lens: torch.Tensor, work: DecodeWork) -> torch.Tensor:
    """The compiled kernel where torch.compile works (it needs a C++ compiler on CPU); otherwise, after one warning,
    the same function run eagerly (same results; it copies the blocks, so slower)."""
    global _compile_failed
    if _compile_failed is None:
        try:
            return compiled_decode_attention(query, key_cache, value_cache, seq_lens, work)
        except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, say why once
            _compile_failed = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(f"kvlib: torch.compile could not build the paged decode kernel ({_compile_failed}); "
                          "running it eagerly (same results, slower)", RuntimeWarning, stacklevel=2)
    return paged_decode_attention(query, key_cache, value_cache, seq_lens, work)
