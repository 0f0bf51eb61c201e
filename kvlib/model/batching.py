"""Batches of prompts of different lengths: left padding and the attention mask.

A batch is one (B, T) tensor, so shorter prompts are padded to the longest. For generation the padding goes on
the LEFT: every row's next token is then written at the same column T, right after its own last real token.
The attention mask has transformers' meaning: 1 = real token, 0 = padding. kvlib.generate takes it as
`attention_mask=` and derives per-row positions from it (`cumsum - 1`), so a padded row computes what the
prompt alone computes. The padded slots still get keys and values in the cache: kvlib.measure.padding counts
what that memory costs.

Shapes: B batch, T_prompt padded prompt length, T_total = T_prompt + generated tokens.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


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
