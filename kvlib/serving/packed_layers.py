"""GPT-2's layer stack over a packed (T, C) stream of tokens, written once for the engine's eager step
(kvlib.serving.packed_forward) and its compiled one (kvlib.serving.compiled_step): the two differ only in how a layer
attends, which the caller passes in.

Shapes: T tokens, C channels, nh heads, nkv K/V heads, hs head size, R_out rows kept, V vocabulary, N blocks of S
slots (the pool: (N, nkv, S, hs), kvlib.cache.paged.layout).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..config import GPT2Config
from .prepacked import GPT2Products

# attend(layer, q (T, nh, hs), k, v (T, nkv, hs)) -> (T, nh, hs): writes the layer's new K/V, attends.
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def gpt2_layers(cfg: GPT2Config, transformer: nn.Module, products: GPT2Products, x: torch.Tensor, attend: Attend,
                keep: torch.Tensor | None = None) -> torch.Tensor:
    """Embedded tokens x (T, C) through every block and the LM head -> logits (T, V), or (len(keep), V) for the rows
    `keep` (after the last attention nothing mixes rows, so the others are dropped there)."""
    T, C, nh, nkv, hs = x.shape[0], cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim
    for i, (block, (qkv_proj, out_proj, fc, fc_proj)) in enumerate(zip(transformer.h, products.layers)):
        q, k, v = qkv_proj(block.ln_1(x)).split([C, nkv * hs, nkv * hs], dim=-1)  # (T, C), (T, nkv*hs) x2
        y = attend(i, q.view(T, nh, hs), k.view(T, nkv, hs), v.view(T, nkv, hs)).reshape(T, C)  # heads side by side
        if keep is not None and i == cfg.n_layer - 1:  # from here on rows do not mix
            if not len(keep):  # only prompt chunks that are not their last: K/V written, no logits
                return x.new_empty(0, cfg.vocab_size)
            x, y = x[keep], y[keep]  # (R_out, C)
        x = x + out_proj(y)
        x = x + fc_proj(fc(block.ln_2(x)))
    return products.lm_head(transformer.ln_f(x))  # (T or R_out, V)
