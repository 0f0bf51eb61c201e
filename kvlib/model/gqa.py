"""Grouped-query attention from a multi-head checkpoint, and back (Ainslie et al. 2023).

GQA keeps n_head query heads but only n_kv_head K/V heads; query head h reads K/V head h // g, g = n_head //
n_kv_head (kvlib.model.gpt2.repeat_kv). A trained multi-head model is converted by mean-pooling the K and V projections
of each group of g heads into one (the paper's conversion, which it follows with a short uptraining).

Layout of GPT-2's fused projection c_attn (Conv1D, weight (in, out) = (C, C + 2 · n_kv_head · hs)): the output
columns are q (C) | k (n_kv_head · hs) | v (n_kv_head · hs), head j of k in columns j·hs .. (j+1)·hs of the k block.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import torch

from .gpt2 import GPT2


def _check_model(model: GPT2) -> None:
    if not isinstance(model, GPT2):
        raise TypeError(f"model must be a kvlib.GPT2, got {type(model).__name__}")
    if getattr(model, "kv_lora_rank", None) is not None:
        raise TypeError("this model uses latent attention (kvlib.model.mla): it has no K/V heads to pool; pool the "
                        "multi-head model instead")


def allowed_n_kv_heads(n_head: int) -> list[int]:
    """The K/V head counts a model with n_head query heads can have: the divisors of n_head (n_head = MHA, 1 = MQA)."""
    return [d for d in range(1, n_head + 1) if n_head % d == 0]


def _split_qkv(t: torch.Tensor, C: int, kv_width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A c_attn weight (C, C + 2·kv_width) or bias (C + 2·kv_width,) split into its q, k, v column blocks."""
    return t.split([C, kv_width, kv_width], dim=-1)


def _with_kv_columns(model: GPT2, n_kv_head: int, convert) -> GPT2:
    """A copy of model with config.n_kv_head = n_kv_head, each c_attn's k and v blocks replaced by convert(block)."""
    config = model.config
    new = GPT2(replace(config, n_kv_head=n_kv_head))
    new.weights_source = model.weights_source
    new = new.to(dtype=model.lm_head.weight.dtype, device=model.lm_head.weight.device)
    state = {k: v for k, v in model.state_dict().items()}
    C, hs = config.n_embd, config.head_dim
    for i in range(config.n_layer):
        for kind in ("weight", "bias"):
            name = f"transformer.h.{i}.attn.c_attn.{kind}"
            q, k, v = _split_qkv(state[name], C, config.n_kv_head * hs)
            state[name] = torch.cat([q, convert(k), convert(v)], dim=-1)
    with torch.no_grad():
        for name, tensor in new.state_dict().items():
            tensor.copy_(state[name])
    return new.train(model.training)


def mean_pool_kv_heads(model: GPT2, n_kv_head: int) -> GPT2:
    """A GQA copy of an MHA (or GQA) model: each group of g = n_kv_head_old // n_kv_head K/V heads averaged into one.

    The K and V projections are linear, so averaging their weight and bias columns averages the heads' keys and
    values: k_j' = mean over h in group j of (x W_k,h + b_k,h). The model given is left unchanged.
    """
    _check_model(model)
    old = model.config.n_kv_head
    if isinstance(n_kv_head, bool) or not isinstance(n_kv_head, int):
        raise TypeError(f"n_kv_head must be an int, got {type(n_kv_head).__name__}")
    if n_kv_head < 1 or old % n_kv_head:
        raise ValueError(
            f"n_kv_head ({n_kv_head}) must divide the model's {old} K/V heads (and so n_head="
            f"{model.config.n_head}); allowed: {allowed_n_kv_heads(old)}"
        )
    g, hs = old // n_kv_head, model.config.head_dim

    def pool(block: torch.Tensor) -> torch.Tensor:  # (..., old·hs) -> (..., n_kv_head·hs)
        lead = block.shape[:-1]
        return block.reshape(*lead, n_kv_head, g, hs).mean(dim=-2).reshape(*lead, n_kv_head * hs)

    return _with_kv_columns(model, n_kv_head, pool)


def expand_kv_heads(model: GPT2) -> GPT2:
    """The multi-head model that computes exactly what a GQA model computes: each K/V head copied g times.

    Query head h of the GQA model reads K/V head h // g; in the copy, head h has its own K/V projection columns,
    equal to those of K/V head h // g. With n_kv_head == n_head it is a plain copy.
    """
    _check_model(model)
    config = model.config
    n_kv, g, hs = config.n_kv_head, config.n_kv_groups, config.head_dim

    def duplicate(block: torch.Tensor) -> torch.Tensor:  # (..., n_kv·hs) -> (..., n_head·hs)
        lead = block.shape[:-1]
        heads = block.reshape(*lead, n_kv, 1, hs)  # (..., n_kv, 1, hs)
        return heads.expand(*lead, n_kv, g, hs).reshape(*lead, n_kv * g * hs)  # (..., nh·hs): head h = kv h // g

    if g == 1:
        return copy.deepcopy(model)
    return _with_kv_columns(model, config.n_head, duplicate)
