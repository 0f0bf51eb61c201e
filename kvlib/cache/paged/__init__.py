"""Paged KV memory: `Sequence` (bookkeeping), `BlockManager` (block ids, reference counts, free list, prefix cache;
no tensors) and `PagedKVCache` (the block pool tensors, written by slot and gathered by block table).

kvlib.serving schedules requests over them. May import: kvlib.config and kvlib.attention.
"""
from .block_manager import BlockManager, blocks_needed, chain_hash
from .cache import PagedKVCache
from .sequence import Sequence, SequenceStatus
