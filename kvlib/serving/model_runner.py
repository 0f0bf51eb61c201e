"""Turns a scheduled batch into one forward and samples each row's next token (nano-vllm's ModelRunner). Owns the
block pool.

Two layouts of a step:
- `ModelRunner` (the engine's default): packed rows. Every request feeds only its own new tokens, end to end
  (kvlib.serving.input_batch), through GPT-2's weights (kvlib.serving.packed_forward), attending over the pool
  where the blocks are; logits only where a token is produced.
- `PaddedModelRunner`: the readable model's (R, T_new) batch, every row left-padded to the longest chunk, K/V
  gathered out of the pool by PagedKVCache.update (the engine as it was before packed rows: kept to compare).

Shapes: R rows (one per scheduled request), T tokens, V vocab.
"""
from __future__ import annotations

import torch
from torch.autograd.profiler import record_function

from ..cache.paged.cache import PagedKVCache
from ..model.gpt2 import GPT2
from .input_batch import build_packed_batch
from .packed_forward import PackedGPT2
from .sampling import SamplingParams, sample_tokens
from .scheduler import ScheduledBatch


class ModelRunner:
    """enforce_eager=False: steps of decode rows only run as one compiled graph (kvlib.serving.compiled_step); the
    pool then holds one block more than the block manager hands out, for that graph's padding row."""

    def __init__(self, model: GPT2, num_blocks: int, block_size: int, *, attention: str = "fast",
                 prepack: bool = True, enforce_eager: bool = True) -> None:
        self.model = model
        w = model.lm_head.weight
        extra = 0 if enforce_eager else 1  # block num_blocks: no request's
        self.kv_cache = PagedKVCache(model.config, num_blocks + extra, block_size, dtype=w.dtype, device=w.device)
        self.device = w.device
        self.forward = PackedGPT2(model, self.kv_cache, attention=attention, prepack=prepack,
                                  enforce_eager=enforce_eager, padding_block=None if enforce_eager else num_blocks)

    def computed_positions(self, batch: ScheduledBatch) -> int:
        """Token positions the forward computes: exactly the real ones."""
        return batch.num_batched_tokens

    @torch.inference_mode()  # every tensor of a step an inference tensor (the compiled step guards on it)
    def run(self, batch: ScheduledBatch, sampling: list[SamplingParams],
            generators: list[torch.Generator | None]) -> list[int | None]:
        """One forward over the step; the next token of each row that reaches its newest token, None for a row
        that fed a prompt chunk that is not its last."""
        packed = build_packed_batch(batch.seqs, batch.num_new_tokens, self.kv_cache.block_size, self.device)
        with record_function("kvlib::forward"):  # the profiler's name for the model's forward (GPT2 hooks say the same)
            logits = self.forward(packed)  # (R_out, V)
        rows = packed.sample_rows
        tokens: list[int | None] = [None] * len(batch.seqs)
        for i, t in zip(rows, sample_tokens(logits, [sampling[i] for i in rows], [generators[i] for i in rows])):
            tokens[i] = t
        return tokens


class PaddedModelRunner:
    def __init__(self, model: GPT2, num_blocks: int, block_size: int) -> None:
        self.model = model
        w = model.lm_head.weight
        self.kv_cache = PagedKVCache(model.config, num_blocks, block_size, dtype=w.dtype, device=w.device)
        self.device = w.device

    def computed_positions(self, batch: ScheduledBatch) -> int:
        """Token positions the forward computes: every row padded to the longest chunk."""
        return len(batch.seqs) * max(batch.num_new_tokens)

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
    def run(self, batch: ScheduledBatch, sampling: list[SamplingParams],
            generators: list[torch.Generator | None]) -> list[int | None]:
        """One forward over every row; the next token after each row's last fed token."""
        input_ids = self.prepare_inputs(batch)
        logits = self.model(input_ids, self.kv_cache, attention_mask=self.kv_cache.attention_mask(),
                            position_ids=self.kv_cache.position_ids(), logits_to_keep=1)[:, -1]  # (R, V)
        return sample_tokens(logits, sampling, generators)
