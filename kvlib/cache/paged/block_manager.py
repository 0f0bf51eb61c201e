"""The block allocator: block ids, reference counts, a free list and the prefix cache. No tensors, no model.

A pool of `num_blocks` blocks of `block_size` token slots. Every block is either
- in use: reference count >= 1 (held by that many sequences' block tables), or
- free: reference count 0, in the LRU free list (oldest first). A free block that still holds a cached prefix
  (it has a hash) is "cached and evictable": a new request may reuse it until it is handed out again.
so `num_free_blocks + num_used_blocks == num_blocks` always (`check_invariants`).

Prefix caching (vLLM's automatic prefix caching, nano-vllm's BlockManager): a full block's hash is
hash((parent block's hash, the block's token ids)), so it names the whole prefix up to the block's end. A lookup
that finds a hash also compares the stored prefix token ids: a hash collision must never hand out another
request's K/V. Only blocks whose K/V were computed are registered, and only full ones.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from .sequence import Sequence


def chain_hash(parent_hash: int | None, block_token_ids: tuple[int, ...]) -> int:
    """A full block's prefix hash: hash((parent hash or -1, token ids)). Python's tuple-of-int hash is deterministic."""
    return hash((-1 if parent_hash is None else parent_hash, block_token_ids))


def blocks_needed(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)  # ceil


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, *, enable_prefix_caching: bool = True,
                 hash_fn: Callable[[int | None, tuple[int, ...]], int] = chain_hash) -> None:
        for name, value in (("num_blocks", num_blocks), ("block_size", block_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.hash_fn = hash_fn
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.block_prefix: list[tuple[int, ...] | None] = [None] * num_blocks  # token ids 0..block end, when hashed
        self.free_blocks: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # LRU: oldest first
        self.hash_to_block: dict[int, int] = {}
        self.num_evictions = 0

    # -- counts ---------------------------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def num_cached_free_blocks(self) -> int:
        """Free blocks that still hold a reusable cached prefix (evictable)."""
        return sum(self.block_hash[b] is not None for b in self.free_blocks)

    @property
    def num_used_blocks(self) -> int:
        return sum(r > 0 for r in self.ref_counts)

    def check_invariants(self, sequences: list[Sequence] = ()) -> None:
        """free + in use == num_blocks; free blocks have count 0; hashes point at their blocks; and, given the
        sequences holding blocks, each block's reference count equals the number of tables listing it."""
        assert self.num_free_blocks + self.num_used_blocks == self.num_blocks, "a block is neither free nor in use"
        assert all(self.ref_counts[b] == 0 for b in self.free_blocks), "a free block has a reference"
        assert all(self.block_hash[b] == h for h, b in self.hash_to_block.items()), "a stale hash entry"
        if sequences:
            held = [0] * self.num_blocks
            for seq in sequences:
                for b in seq.block_table:
                    held[b] += 1
            assert held == self.ref_counts, "reference counts differ from the block tables"

    # -- prefix cache ---------------------------------------------------------------------------------------------
    def match_prefix(self, token_ids: list[int]) -> list[int]:
        """Block ids holding the longest cached prefix of token_ids, whole blocks only, never the last token: at
        least one token is always computed, so even a full-prompt hit produces logits."""
        if not self.enable_prefix_caching:
            return []
        matched: list[int] = []
        parent = None
        for i in range((len(token_ids) - 1) // self.block_size):
            end = (i + 1) * self.block_size
            h = self.hash_fn(parent, tuple(token_ids[end - self.block_size:end]))
            b = self.hash_to_block.get(h)
            if b is None or self.block_prefix[b] != tuple(token_ids[:end]):  # a miss, or a hash collision
                break
            matched.append(b)
            parent = h
        return matched

    def cache_computed_blocks(self, seq: Sequence) -> None:
        """Register the hashes of seq's full blocks whose K/V are now computed (call after each forward)."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        parent = None
        for i in range(seq.num_computed_tokens // bs):
            b = seq.block_table[i]
            if self.block_hash[b] is not None:  # already cached: its hash names this same prefix, no need to rehash
                parent = self.block_hash[b]
                continue
            end = (i + 1) * bs
            h = self.hash_fn(parent, tuple(seq.token_ids[end - bs:end]))
            parent = h
            if h in self.hash_to_block:
                continue  # an identical prefix computed by another request
            self.block_hash[b] = h
            self.block_prefix[b] = tuple(seq.token_ids[:end])
            self.hash_to_block[h] = b

    # -- allocation -----------------------------------------------------------------------------------------------
    def allocate(self, seq: Sequence) -> None:
        """Admit seq: take its cached prefix blocks (reference count up); the rest is computed."""
        if seq.block_table:
            raise ValueError(f"sequence {seq.seq_id} already holds blocks {seq.block_table}")
        for b in self.match_prefix(seq.token_ids):
            self._take(b)
            seq.block_table.append(b)
        seq.num_computed_tokens = seq.num_cached_tokens = len(seq.block_table) * self.block_size

    def num_blocks_to_append(self, seq: Sequence, num_new_tokens: int) -> int:
        return max(0, blocks_needed(seq.num_computed_tokens + num_new_tokens, self.block_size) - len(seq.block_table))

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.num_blocks_to_append(seq, num_new_tokens) <= self.num_free_blocks

    def append_slots(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Grow seq's block table to hold num_new_tokens more tokens; False (and nothing taken) if too few free."""
        n = self.num_blocks_to_append(seq, num_new_tokens)
        if n > self.num_free_blocks:
            return False
        for _ in range(n):
            seq.block_table.append(self._take_free())
        return True

    def free(self, seq: Sequence) -> None:
        """Release every block of seq, last block first: it holds the longest prefix, least likely reused, so it
        is evicted first."""
        for b in reversed(seq.block_table):
            self.release(b)
        seq.block_table = []

    def crop(self, seq: Sequence, num_tokens: int) -> None:
        """Speculative rollback: seq keeps the K/V of its first num_tokens computed tokens (the accepted ones).

        Blocks past them go back to the pool; the block holding the last kept token stays (its rejected slots are
        rewritten by the next forward). No block that held a rejected token stays in the prefix cache: its hash
        would name K/V that are about to be overwritten. So register blocks (cache_computed_blocks) only after
        crop. seq.token_ids is the caller's: append only accepted tokens to it.
        """
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int):
            raise TypeError(f"num_tokens must be an int, got {type(num_tokens).__name__}")
        if num_tokens > seq.num_computed_tokens:
            raise ValueError(f"sequence {seq.seq_id} has {seq.num_computed_tokens} computed tokens: it cannot keep "
                             f"{num_tokens}")
        if num_tokens < seq.num_cached_tokens:
            raise ValueError(f"sequence {seq.seq_id} cannot keep only {num_tokens} tokens: its first "
                             f"{seq.num_cached_tokens} are shared prefix-cache blocks (a rollback past the start of "
                             "its own K/V)")
        for b in seq.block_table[num_tokens // self.block_size:]:  # every block holding a rejected slot
            h = self.block_hash[b]
            if h is not None:
                if self.hash_to_block.get(h) == b:
                    del self.hash_to_block[h]
                self.block_hash[b] = self.block_prefix[b] = None
        keep = blocks_needed(num_tokens, self.block_size)
        for b in reversed(seq.block_table[keep:]):
            self.release(b)
        del seq.block_table[keep:]
        seq.num_computed_tokens = num_tokens

    def release(self, block_id: int) -> None:
        if self.ref_counts[block_id] <= 0:
            raise RuntimeError(f"block {block_id} freed twice: its reference count is already 0")
        self.ref_counts[block_id] -= 1
        if self.ref_counts[block_id] == 0:
            self.free_blocks[block_id] = None  # most recently used end

    def _take(self, block_id: int) -> None:
        if self.ref_counts[block_id] == 0:
            del self.free_blocks[block_id]
        self.ref_counts[block_id] += 1

    def _take_free(self) -> int:
        """The least recently freed block, its cached prefix (if any) evicted: its slots are about to be rewritten."""
        b, _ = self.free_blocks.popitem(last=False)
        h = self.block_hash[b]
        if h is not None:
            if self.hash_to_block.get(h) == b:
                del self.hash_to_block[h]
            self.block_hash[b] = self.block_prefix[b] = None
            self.num_evictions += 1
        self.ref_counts[b] = 1
        return b
