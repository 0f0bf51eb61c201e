"""PagedKVCache: K/V in one pool of fixed-size blocks per layer (vLLM's layout), read through block tables.

Shapes: R rows (sequences) in one forward, T_new new tokens per row (rows with fewer are left-padded),
T_k keys gathered per row (its cached + new tokens, padded to the longest row), nkv K/V heads, hs head size,
N num_blocks, S block_size.

Per layer, `key_cache[layer]` and `value_cache[layer]` are (N, nkv, S, hs), parts of one tensor `kv_pool`
(2, L, N, nkv, S, hs), each block stored head by head (kvlib.cache.paged.layout): token i of a sequence lives in
block block_table[i // S] at offset i % S, slot block * S + offset. `update` writes the new tokens' K/V to their
slots, then gathers each row's slots into a (R, nkv, T_k, hs) tensor for attention: the gather is what a paged
attention kernel avoids by reading the blocks in place.

Two ways to drive it:
- the serving engine calls `prepare(block_tables, context_lens, query_lens)` before each forward and passes
  `attention_mask()` and `position_ids()` to the model (rows of different lengths in one forward);
- used alone as `past_key_values` (e.g. by `kvlib.generate(cache="paged")`), it gives each of the B rows its own
  blocks from its free list as they fill, like a DynamicKVCache for a batch of equal-length rows.
"""
from __future__ import annotations

import torch

from ...config import GPT2Config
from ..contiguous import resolve_crop
from .block_manager import blocks_needed
from .layout import head_shape, read_slots, token_slots, write_slots


class PagedKVCache:
    def __init__(self, config: GPT2Config, num_blocks: int, block_size: int = 16, *,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a kvlib.GPT2Config, got {type(config).__name__}")
        for name, value in (("num_blocks", num_blocks), ("block_size", block_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value}")
        self.num_blocks, self.block_size, self.n_layer = num_blocks, block_size, config.n_layer
        shape = (num_blocks, config.n_kv_head, block_size, config.head_dim)  # (N, nkv, S, hs)
        dtype = dtype or torch.get_default_dtype()
        # One allocation for every layer's K and V, as nano-vllm's ModelRunner.allocate_kv_cache makes it: the
        # compiled decode step takes it as a single input. Each layer's key_cache[i] / value_cache[i] (N, nkv, S, hs)
        # shares its memory; detached, so that to autograd each is a tensor of its own, as if allocated alone.
        self.kv_pool = torch.zeros((2, config.n_layer, *shape), dtype=dtype, device=device)  # (2, L, N, nkv, S, hs)
        self.key_cache = [self.kv_pool[0, i].detach() for i in range(config.n_layer)]
        self.value_cache = [self.kv_pool[1, i].detach() for i in range(config.n_layer)]
        self._prepared = False
        self._alone = False
        # Used alone: one block table per row, blocks handed out from a free list.
        self.block_tables: list[list[int]] = []
        self._free = list(range(num_blocks - 1, -1, -1))
        self._length = 0

    # -- the step's layout ----------------------------------------------------------------------------------------
    def prepare(self, block_tables: list[list[int]], context_lens: list[int], query_lens: list[int]) -> None:
        """Lay out the next forward: row r has context_lens[r] tokens in the pool (in block_tables[r]) and feeds
        query_lens[r] new ones, left-padded to T_new = max(query_lens); its tables must already cover them."""
        if not (len(block_tables) == len(context_lens) == len(query_lens)) or not block_tables:
            raise ValueError("block_tables, context_lens and query_lens must be non-empty and of equal length")
        S = self.block_size
        T_new = max(query_lens)
        T_k = max(c + q for c, q in zip(context_lens, query_lens))
        device = self.key_cache[0].device
        R = len(block_tables)
        width = max(len(t) for t in block_tables)
        for r, (table, ctx, q) in enumerate(zip(block_tables, context_lens, query_lens)):
            if q <= 0 or ctx < 0:
                raise ValueError(f"row {r}: query_lens must be >= 1 and context_lens >= 0, got {q} and {ctx}")
            if blocks_needed(ctx + q, S) > len(table):
                raise ValueError(f"row {r}: {ctx + q} tokens need {blocks_needed(ctx + q, S)} blocks, table has "
                                 f"{len(table)}")
        tables = torch.tensor([t + [0] * (width - len(t)) for t in block_tables])  # (R, width), padded with block 0
        slots = token_slots(tables, torch.arange(T_k), S)  # (R, T_k): slot of token i
        ctx = torch.tensor(context_lens)[:, None]  # (R, 1)
        pad = T_new - torch.tensor(query_lens)[:, None]  # (R, 1) left padding per row
        j = torch.arange(T_new)[None, :]  # (1, T_new)
        real = j >= pad  # (R, T_new) real new tokens
        pos = torch.where(real, ctx + j - pad, -1)  # (R, T_new) absolute position, -1 for padding
        # Causal over the row's own keys; a padding query sees key 0 only, so its (discarded) output stays finite.
        mask = torch.arange(T_k)[None, None, :] <= pos[:, :, None]  # (R, T_new, T_k)
        mask[:, :, 0] |= ~real
        self._write_slots = slots.gather(1, pos.clamp(min=0))[real].to(device)  # (real tokens,)
        self._write_rows = real.flatten().nonzero().squeeze(1).to(device)  # their rows in (R * T_new)
        self._gather = slots.to(device)  # padded keys (beyond a row's length) point at valid slots, masked out
        self._mask = mask[:, None].to(device)  # (R, 1, T_new, T_k)
        self._positions = pos.clamp(min=0).to(device)  # (R, T_new)
        self._T_new, self._T_k = T_new, T_k
        self._prepared = True

    def attention_mask(self) -> torch.Tensor:
        """Boolean (R, 1, T_new, T_k) mask of the prepared step."""
        return self._mask

    def position_ids(self) -> torch.Tensor:
        """(R, T_new) positions of the prepared step (0 for padding)."""
        return self._positions

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Prepared: T_k - T_new, so that the model's (T_new, T_total) shapes match the gathered keys.
        Used alone: tokens cached per row."""
        return self._T_k - self._T_new if self._prepared else self._length

    # -- the model's call -----------------------------------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (R, nkv, T_new, hs) states to their slots; return each row's (R, nkv, T_k, hs) keys and values."""
        if not isinstance(key_states, torch.Tensor) or key_states.dim() != 4 or key_states.shape != value_states.shape:
            raise ValueError("key_states and value_states must both be (batch, num_heads, seq_len, head_dim) tensors")
        if not 0 <= layer_idx < self.n_layer:
            raise ValueError(f"layer_idx must be in 0..{self.n_layer - 1}, got {layer_idx}")
        R, nkv, T_new, hs = key_states.shape
        held = head_shape(self.key_cache[0])
        if (nkv, hs) != held:
            raise ValueError(f"this PagedKVCache holds (heads, head_dim) = {held}, got {(nkv, hs)}")
        if not self._prepared and layer_idx == 0:
            self._prepare_alone(R, T_new)
        if self._gather.shape[0] != R or self._T_new != T_new:
            raise ValueError(f"the prepared step has {self._gather.shape[0]} rows of {self._T_new} new tokens, "
                             f"got states for {R} rows of {T_new}")
        k_pool, v_pool = self.key_cache[layer_idx], self.value_cache[layer_idx]  # (N, nkv, S, hs)
        new_k = key_states.transpose(1, 2).reshape(R * T_new, nkv, hs)[self._write_rows]  # (real tokens, nkv, hs)
        new_v = value_states.transpose(1, 2).reshape(R * T_new, nkv, hs)[self._write_rows]
        write_slots(k_pool, self._write_slots, new_k)
        write_slots(v_pool, self._write_slots, new_v)
        keys = read_slots(k_pool, self._gather).transpose(1, 2)  # (R, T_k, nkv, hs) -> (R, nkv, T_k, hs)
        values = read_slots(v_pool, self._gather).transpose(1, 2)
        if self._alone and layer_idx == self.n_layer - 1:  # driving itself: the forward is done, rows grew
            self._length += T_new
            self._prepared = self._alone = False
        return keys, values

    # -- used alone -----------------------------------------------------------------------------------------------
    def _prepare_alone(self, batch_size: int, T_new: int) -> None:
        if not self.block_tables:
            self.block_tables = [[] for _ in range(batch_size)]
        if len(self.block_tables) != batch_size:
            raise ValueError(f"this PagedKVCache holds {len(self.block_tables)} rows, got a batch of {batch_size}")
        need = blocks_needed(self._length + T_new, self.block_size)
        missing = sum(need - len(t) for t in self.block_tables)
        if missing > len(self._free):
            raise ValueError(f"PagedKVCache out of blocks: {batch_size} rows of {self._length + T_new} tokens need "
                             f"{need * batch_size} blocks of {self.block_size}, the pool has {self.num_blocks}")
        for table in self.block_tables:
            while len(table) < need:
                table.append(self._free.pop())
        B = batch_size
        self.prepare(self.block_tables, [self._length] * B, [T_new] * B)
        self._alone = True

    def crop(self, max_length: int) -> None:
        """Used alone: keep each row's first max_length tokens (negative: drop that many). Blocks left holding only
        rejected slots go back to the free list; the block of the last kept token stays, and the next update
        overwrites its rejected slots. Driven by the serving engine, the BlockManager owns the block tables:
        roll a sequence back with BlockManager.crop(seq, num_tokens) instead."""
        if self._prepared and not self._alone:
            raise ValueError("this PagedKVCache is driven by prepare() (the serving engine): roll back a sequence "
                             "with BlockManager.crop(seq, num_tokens), which owns its block table")
        keep = resolve_crop(max_length, self._length, type(self).__name__)
        need = blocks_needed(keep, self.block_size)
        for table in self.block_tables:
            while len(table) > need:
                self._free.append(table.pop())  # the next _prepare_alone hands it out again
        self._length = keep

    # -- sizes ----------------------------------------------------------------------------------------------------
    @property
    def nbytes_allocated(self) -> int:
        """Bytes of the whole pool, all layers, K and V."""
        return sum(t.numel() * t.element_size() for t in self.key_cache + self.value_cache)

    def __len__(self) -> int:
        return self.n_layer

    def __repr__(self) -> str:
        return (f"PagedKVCache(layers={self.n_layer}, num_blocks={self.num_blocks}, block_size={self.block_size}, "
                f"nbytes_allocated={self.nbytes_allocated})")
