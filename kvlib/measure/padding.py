"""What left padding costs: which slots of a generated batch hold padding, and the KV-cache bytes they take.

Every padding slot holds K and V in every layer like a real token (the attention mask only hides them), so a
padded batch's cache is as large as if every row were as long as the longest. kvlib.model.batching pads.

Shapes: B batch, T_prompt padded prompt length, T_total = T_prompt + generated tokens, L layers, C channels.
"""
from __future__ import annotations

import torch

from ..config import GPT2Config
from .memory import bytes_per_token_for_config

# What each column of a generated batch holds, for counting and drawing (see kvlib.teaching.plotting.plot_batch_slots).
PAD_SLOT, PROMPT_SLOT, NEW_SLOT, AFTER_EOS_SLOT = 0, 1, 2, 3
SLOT_LABELS = {PAD_SLOT: "left padding", PROMPT_SLOT: "prompt token", NEW_SLOT: "generated token",
               AFTER_EOS_SLOT: "padding after EOS"}


def slot_kinds(sequences: torch.Tensor, attention_mask: torch.Tensor, eos_token_id: int | None = None) -> torch.Tensor:
    """(B, T_total) int grid saying what each position of generate's output holds: PAD_SLOT, PROMPT_SLOT,
    NEW_SLOT or AFTER_EOS_SLOT (a finished row's filler). attention_mask is the (B, T_prompt) prompt mask."""
    B, T_prompt = attention_mask.shape
    if sequences.dim() != 2 or sequences.shape[0] != B or sequences.shape[1] < T_prompt:
        raise ValueError(f"sequences must be (B={B}, T_total >= {T_prompt}), got {tuple(sequences.shape)}")
    kinds = torch.full(tuple(sequences.shape), NEW_SLOT, dtype=torch.long)  # (B, T_total)
    kinds[:, :T_prompt] = torch.where(attention_mask.cpu().bool(), PROMPT_SLOT, PAD_SLOT)
    if eos_token_id is not None:
        is_eos = (sequences[:, T_prompt:] == eos_token_id).long().cpu()  # (B, T_new)
        after = (is_eos.cumsum(-1) - is_eos) > 0  # strictly after the first EOS of the row
        kinds[:, T_prompt:][after] = AFTER_EOS_SLOT
    return kinds


def padding_waste(
    attention_mask: torch.Tensor, config: GPT2Config, dtype: torch.dtype = torch.float32, max_new_tokens: int = 0
) -> dict[str, int | float]:
    """What left padding costs in a KV cache for a (B, T_prompt) mask with max_new_tokens generated per row.

    Every padding slot holds K and V in every layer like a real token (the mask only hides them), so
    padding_bytes = padding slots × kv_bytes_per_token (kvlib.measure.memory: 2 · L · nh · hs · element size).
    Returns the slot counts, the bytes and the wasted fraction.
    """
    if not isinstance(config, GPT2Config):
        raise TypeError(f"config must be a kvlib.GPT2Config, got {type(config).__name__}")
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must be a (batch, seq_len) tensor, got {got}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    B, T_prompt = attention_mask.shape
    padding_slots = int((attention_mask == 0).sum())
    total_slots = B * (T_prompt + max_new_tokens)
    per_token = bytes_per_token_for_config(config, dtype)
    return {
        "padding_slots": padding_slots,
        "total_slots": total_slots,
        "kv_bytes_per_token": per_token,
        "padding_bytes": padding_slots * per_token,
        "total_bytes": total_slots * per_token,
        "padding_fraction": padding_slots / total_slots,
    }
