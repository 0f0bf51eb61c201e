"""Where a token's K/V live in one layer's block pool: vLLM's CPU layout, each block stored head by head.

One tensor per layer for K and one for V, (N, nkv, S, hs): block b holds, for each K/V head, the S slots of its
tokens one after the other. Token i of a sequence lives in block block_table[i // S] at offset i % S, which the
engine writes as one number, slot = block * S + offset (vLLM's `slot_mapping`).

Why head by head: attention reads one head's keys and values of a block at a time. Here they are one contiguous run
of S * hs numbers; in the token-major layout (N, S, nkv, hs) (vLLM's GPU cache) consecutive slots of a head are a
whole token's K (nkv * hs numbers) apart. On this project's 2-core CPU the engine's compiled decode attention
over a head-major pool took about 1.3x less time (one interleaved measurement while choosing the layout,
2026-12-06: 12 layers, 2 or 8 rows of 240-720 tokens in scattered blocks).

Shapes: T tokens, nkv K/V heads, hs head size, N blocks of S slots.
"""
from __future__ import annotations

import torch

HEAD_DIMS = (1, 3)  # the pool's dims of K/V heads and head size: what a model fixes (blocks and slots vary)


def head_shape(pool: torch.Tensor) -> tuple[int, int]:
    """(nkv, hs) of one layer's pool (N, nkv, S, hs)."""
    return pool.shape[HEAD_DIMS[0]], pool.shape[HEAD_DIMS[1]]


def token_slots(block_tables: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """The slot of each token position through a block table: (W,) or (R, W) tables, (T,) positions -> (T,) or
    (R, T) slots, block_tables[..., i // S] * S + i % S."""
    return block_tables[..., positions // block_size] * block_size + positions % block_size


def read_slots(pool: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The K (or V) at `slots` (any shape) of one layer's pool (N, nkv, S, hs) -> (*slots.shape, nkv, hs): a copy."""
    S = pool.shape[2]
    return pool[slots // S, :, slots % S]


def write_slots(pool: torch.Tensor, slots: torch.Tensor, states: torch.Tensor) -> None:
    """states (T, nkv, hs) into their slots (T,) of one layer's pool (N, nkv, S, hs), in place (vLLM's
    `reshape_and_cache`)."""
    S = pool.shape[2]
    pool[slots // S, :, slots % S] = states.to(pool.dtype)


def write_layer_slots(kv_pool: torch.Tensor, layer: int, slots: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor) -> None:
    """New tokens' K and V (T, nkv, hs) into their slots (T,) of one layer of the whole pool (2, L, N, nkv, S, hs),
    in place: kv_pool[K or V, layer, slot's block, every head, slot's offset]. One index_put on the pool itself, not
    on a view of it: in a compiled step, writing through a view of the graph's input copies the whole input."""
    nkv, S, device = kv_pool.shape[3], kv_pool.shape[4], slots.device
    kind = torch.arange(2, device=device)[:, None, None]  # (2, 1, 1): K, V
    index = (kind, torch.full_like(kind, layer), (slots // S)[:, None], torch.arange(nkv, device=device),
             (slots % S)[:, None])  # broadcast to (2, T, nkv)
    kv_pool.index_put_(index, torch.stack([key, value]).to(kv_pool.dtype))  # (2, T, nkv, hs)
