"""Turns a scheduled batch into one forward: owns the model and the block pool (nano-vllm's ModelRunner).

Shapes: R rows (one per scheduled request), T_new the most new tokens any row feeds (others left-padded), V vocab.
"""
from __future__ import annotations

import torch

from ..model.generation import sample_next_token
from ..model.gpt2 import GPT2
from ..cache.paged.cache import PagedKVCache
from .scheduler import ScheduledBatch


class ModelRunner:
    def __init__(self, model: GPT2, num_blocks: int, block_size: int) -> None:
        self.model = model
        w = model.lm_head.weight
        self.kv_cache = PagedKVCache(model.config, num_blocks, block_size, dtype=w.dtype, device=w.device)
        self.device = w.device

    def prepare_inputs(self, batch: ScheduledBatch) -> torch.Tensor:
        """(R, T_new) input ids, each row's new tokens at the right end; lays out the cache's slots and mask."""
        T_new = max(batch.num_new_tokens)
        input_ids = torch.zeros(len(batch.seqs), T_new, dtype=torch.long)  # (R, T_new), padding = token 0
        for r, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            start = seq.num_computed_tokens
            input_ids[r, T_new - n:] = torch.tensor(seq.token_ids[start:start + n])
        self.kv_cache.prepare([s.block_table for s in batch.seqs], [s.num_computed_tokens for s in batch.seqs],
                              batch.num_new_tokens)
        return input_ids.to(self.device)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> list[int]:
        """One forward over every row; the greedy next token after each row's last fed token."""
        input_ids = self.prepare_inputs(batch)
        logits = self.model(input_ids, self.kv_cache, attention_mask=self.kv_cache.attention_mask(),
                            position_ids=self.kv_cache.position_ids(), logits_to_keep=1)[:, -1]  # (R, V)
        return sample_next_token(logits).tolist()
