"""Paged KV memory: `Sequence` (bookkeeping), `BlockManager` (block ids, reference counts, free list, prefix cache;
no tensors) and `PagedKVCache` (the block pool tensors, written by slot and gathered by block table; `layout`: where a
slot lives in them); attention over
the pool: `attention` (the gather, the online softmax block by block, block ranges merged by log-sum-exp: the
readable references), `decode_kernel` (the engine's decode kernel, compiled) and `fast_attention` (a packed step).

kvlib.serving schedules requests over them. May import: kvlib.config and kvlib.attention.
"""
from .block_manager import BlockManager, blocks_needed, chain_hash
from .cache import PagedKVCache
from .sequence import Sequence, SequenceStatus
