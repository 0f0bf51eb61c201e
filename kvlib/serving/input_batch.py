"""One step's scheduled requests as flat tensors (packed rows, "varlen"), nano-vllm's prepare_prefill/prepare_decode.

Each row feeds only its own new tokens, and the rows are packed end to end: no row is padded to the longest.
Decode rows (one new token) come first, then the rows that feed several tokens (prefill chunks), so the decode
queries are one contiguous slice. Per token: its position and its slot in the pool; per row: where its tokens start
(query_start_loc), how many tokens it has in the pool once this step's are written (seq_lens), its block table.

Shapes: T new tokens of all rows, R rows, W blocks in the longest block table, D decode rows (the first D).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cache.paged.sequence import Sequence


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (T,) every row's new tokens, end to end
    positions: torch.Tensor  # (T,) absolute position of each (its row's cached tokens come first)
    slot_mapping: torch.Tensor  # (T,) pool slot of each token's K/V: block_table[p // S] * S + p % S
    query_start_loc: torch.Tensor  # (R + 1,) row r's tokens are [query_start_loc[r], query_start_loc[r + 1])
    seq_lens: torch.Tensor  # (R,) tokens in the pool for row r after this step's are written
    block_tables: torch.Tensor  # (R, W) padded with block 0 (never read past seq_lens)
    num_decode_rows: int  # D: rows 0..D-1 feed one token each
    query_lens: list[int]  # (R,) new tokens per row, as Python ints (the prefill rows' loop)
    context_lens: list[int]  # (R,) tokens already in the pool before this step
    logits_indices: torch.Tensor  # (R_out,) the last token of each row that produces a token this step
    sample_rows: list[int]  # (R_out,) those rows, as positions in the scheduled batch
    order: list[int]  # row r here is row order[r] of the scheduled batch

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


def build_packed_batch(seqs: list[Sequence], num_new_tokens: list[int], block_size: int,
                       device: torch.device | str = "cpu") -> PackedBatch:
    """Lay out one step: seqs[i] feeds num_new_tokens[i] tokens after its num_computed_tokens. A row produces a
    token when it reaches the end of what it has (a decode, or the last chunk of a prompt)."""
    if len(seqs) != len(num_new_tokens) or not seqs:
        raise ValueError("seqs and num_new_tokens must be non-empty and of equal length")
    order = sorted(range(len(seqs)), key=lambda i: num_new_tokens[i] != 1)  # decode rows first, stable
    S = block_size
    ids, positions, slots, starts, seq_lens, tables, ctx_lens, q_lens = [], [], [], [0], [], [], [], []
    logits_indices, sample_rows = [], []
    for i in order:
        seq, n = seqs[i], num_new_tokens[i]
        ctx, table = seq.num_computed_tokens, seq.block_table
        if n < 1 or ctx + n > seq.num_tokens or -(-(ctx + n) // S) > len(table):
            raise ValueError(f"request {seq.seq_id}: cannot feed {n} tokens after {ctx} with {len(table)} blocks "
                             f"of {S} for {seq.num_tokens} tokens")
        ids += seq.token_ids[ctx:ctx + n]
        positions += range(ctx, ctx + n)
        slots += [table[p // S] * S + p % S for p in range(ctx, ctx + n)]
        starts.append(starts[-1] + n)
        seq_lens.append(ctx + n)
        ctx_lens.append(ctx)
        q_lens.append(n)
        tables.append(table)
        if ctx + n == seq.num_tokens:  # the row reaches its newest token: sample after it
            logits_indices.append(starts[-1] - 1)
            sample_rows.append(i)
    width = max(len(t) for t in tables)
    as_long = dict(dtype=torch.long, device=device)
    return PackedBatch(
        input_ids=torch.tensor(ids, **as_long), positions=torch.tensor(positions, **as_long),
        slot_mapping=torch.tensor(slots, **as_long), query_start_loc=torch.tensor(starts, **as_long),
        seq_lens=torch.tensor(seq_lens, **as_long),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], **as_long),
        num_decode_rows=sum(n == 1 for n in num_new_tokens), query_lens=q_lens, context_lens=ctx_lens,
        logits_indices=torch.tensor(logits_indices, **as_long), sample_rows=sample_rows, order=order)
