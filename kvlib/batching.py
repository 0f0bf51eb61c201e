"""Batches of prompts of different lengths: left padding, the attention mask, and what padding costs.

A batch is one (B, T) tensor, so shorter prompts are padded to the longest. For generation the padding goes on
the LEFT: every row's next token is then written at the same column T, right after its own last real token.
The attention mask has transformers' meaning: 1 = real token, 0 = padding. kvlib.generate takes it as
`attention_mask=` and derives per-row positions from it (`cumsum - 1`), so a padded row computes what the
prompt alone computes. The padded slots still get keys and values in the cache: that memory is the price.

Shapes: B batch, T_prompt padded prompt length, T_total = T_prompt + generated tokens, L layers, C channels.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import GPT2Config
from .memory import bytes_per_token_for_config


def left_pad(
    prompts: Sequence[Sequence[int]], pad_token_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T_prompt) int64, from B lists of token ids padded on the left.

    T_prompt is the longest prompt; shorter rows start with pad_token_id and a 0 in the mask.
    """
    if isinstance(prompts, (str, torch.Tensor)) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of lists of token ids, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: give at least one prompt")
    if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or pad_token_id < 0:
        raise TypeError(f"pad_token_id must be a non-negative int (a token id), got {pad_token_id!r}")
    rows = []
    for i, p in enumerate(prompts):
        if isinstance(p, (str, torch.Tensor)) or not isinstance(p, Sequence):
            raise TypeError(f"prompt {i} must be a list of token ids, got {type(p).__name__}")
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in p):
            raise TypeError(f"prompt {i} must hold non-negative int token ids, got {list(p)[:8]}")
        rows.append(list(p))
    T_prompt = max(len(p) for p in rows)
    input_ids = torch.full((len(rows), T_prompt), pad_token_id, dtype=torch.long)  # (B, T_prompt)
    attention_mask = torch.zeros((len(rows), T_prompt), dtype=torch.long)  # (B, T_prompt)
    for i, p in enumerate(rows):
        input_ids[i, T_prompt - len(p):] = torch.tensor(p, dtype=torch.long)
        attention_mask[i, T_prompt - len(p):] = 1
    return input_ids.to(device), attention_mask.to(device)


def unpad_rows(
    sequences: torch.Tensor, attention_mask: torch.Tensor, eos_token_id: int | None = None
) -> list[list[int]]:
    """Each row of generate's output (B, T_total) without its left padding, cut after its first generated EOS.

    attention_mask is the (B, T_prompt) prompt mask given to generate. The result is comparable with a solo run.
    """
    if sequences.dim() != 2 or attention_mask.dim() != 2 or sequences.shape[0] != attention_mask.shape[0]:
        raise ValueError(
            f"expected sequences (B, T_total) and attention_mask (B, T_prompt) with the same B; got "
            f"{tuple(sequences.shape)} and {tuple(attention_mask.shape)}"
        )
    T_prompt = attention_mask.shape[1]
    if sequences.shape[1] < T_prompt:
        raise ValueError(f"sequences ({sequences.shape[1]} columns) is shorter than the prompt mask ({T_prompt})")
    rows = []
    for seq, mask in zip(sequences.tolist(), attention_mask.tolist()):
        n_pad = mask.index(1) if 1 in mask else T_prompt
        generated = seq[T_prompt:]
        if eos_token_id is not None and eos_token_id in generated:
            generated = generated[: generated.index(eos_token_id) + 1]  # keep the EOS, drop the padding after it
        rows.append(seq[n_pad:T_prompt] + generated)
    return rows


# What each column of a generated batch holds, for counting and drawing (see kvlib.plotting.plot_batch_slots).
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
    padding_bytes = padding slots × kv_bytes_per_token (kvlib.memory: 2 · L · nh · hs · element size).
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
