"""What one GPT2.forward call is given, checked, and the mask and positions derived from it.

Shapes: B batch, T_new tokens fed in this call, past_len tokens already cached, T_total = past_len + T_new,
nh heads, V vocabulary. input_ids is (B, T_new); a 2-D attention_mask is (B, T_total), 1 for tokens and 0 for
(left) padding, a 4-D one a boolean (B or 1, 1 or nh, T_new, T_total); position_ids is (B or 1, T_new).

Every mistake a caller can make with these gets a TypeError/ValueError saying what is allowed, before anything
deep inside the model trips over it.
"""
from __future__ import annotations

import torch

from ..attention import causal_mask
from ..config import GPT2Config


def check_input_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """Raise a clear error unless input_ids is a non-empty (B, T) int64 tensor of ids in [0, vocab_size)."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.LongTensor of shape (batch, seq_len), got {type(input_ids).__name__}")
    if input_ids.dtype != torch.long:
        raise TypeError(f"input_ids must hold token ids as torch.long (int64), got {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(
            f"input_ids must have shape (batch, seq_len), got {input_ids.dim()} dimension(s) {tuple(input_ids.shape)}; "
            "for one prompt use input_ids[None]"
        )
    if input_ids.numel() == 0:
        raise ValueError(f"input_ids is empty {tuple(input_ids.shape)}: give at least one token per sequence")
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"token ids must be in [0, {vocab_size}), got values in [{low}, {high}]")


def check_forward_inputs(config: GPT2Config, shape: torch.Size, past_key_values: object, attention_mask: object,
                         position_ids: object, logits_to_keep: object) -> None:
    """Clear errors for the forward's optional inputs, before anything deep inside trips over them.

    shape: input_ids.shape, (B, T_new). The others are checked as GPT2.forward documents them, except what needs
    the cache length (a 2-D attention_mask's T_total, a 4-D one's last two dimensions): mask_and_positions checks that.
    """
    B, T_new = shape
    if past_key_values is not None and not (hasattr(past_key_values, "update")
                                            and hasattr(past_key_values, "get_seq_length")):
        hint = (" (the legacy tuple-of-tuples format was removed, as in transformers 5: wrap it with "
                "kvlib.to_dynamic_cache or build a kvlib.DynamicKVCache)" if isinstance(past_key_values, (tuple, list))
                else "")
        raise TypeError("past_key_values must be None or a cache with update() and get_seq_length() "
                        f"(kvlib.DynamicKVCache, StaticKVCache, PagedKVCache), got {type(past_key_values).__name__}{hint}")
    if position_ids is not None:
        if not isinstance(position_ids, torch.Tensor):
            raise TypeError(f"position_ids must be an integer tensor of shape (batch or 1, {T_new}), got "
                            f"{type(position_ids).__name__}")
        if position_ids.dtype not in (torch.long, torch.int32):
            raise TypeError(f"position_ids must be torch.long (or int32), got {position_ids.dtype}")
        if position_ids.dim() not in (1, 2) or position_ids.shape[-1] != T_new or (
                position_ids.dim() == 2 and position_ids.shape[0] not in (1, B)):
            raise ValueError(f"position_ids must be (batch or 1, T_new) = ({B} or 1, {T_new}), got "
                             f"{tuple(position_ids.shape)}")
        if position_ids.numel() and (int(position_ids.min()) < 0 or int(position_ids.max()) >= config.n_positions):
            raise ValueError(f"position_ids must be in [0, n_positions={config.n_positions}), got values in "
                             f"[{int(position_ids.min())}, {int(position_ids.max())}]")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}")
        if attention_mask.dim() == 4 and (attention_mask.shape[0] not in (1, B)
                                          or attention_mask.shape[1] not in (1, config.n_head)):
            raise ValueError(f"a 4-D attention_mask must be (batch or 1, 1 or n_head, T_new, T_total) with batch={B}, "
                             f"n_head={config.n_head}; got {tuple(attention_mask.shape)}")
        if attention_mask.dim() == 2 and attention_mask.dtype != torch.bool and attention_mask.numel() and not bool(
                ((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("a 2-D attention_mask must hold only 1 (token) and 0 (padding)")
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be an int >= 0 (0 keeps every position), got {logits_to_keep!r}")


def mask_and_positions(
    input_ids: torch.Tensor, past_len: int, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The boolean attention mask (or None) and position ids (B or 1, T_new) for one forward."""
    B, T_new = input_ids.shape
    T_total = past_len + T_new
    device = input_ids.device
    if attention_mask is None or attention_mask.dim() == 4:
        mask = attention_mask
        if mask is None and T_new > 1:
            mask = causal_mask(T_new, T_total, device)  # (T_new, T_total); one new token needs no mask
        elif mask is not None and (mask.dtype != torch.bool or mask.shape[-2:] != (T_new, T_total)):
            raise ValueError(f"a 4-D attention_mask must be boolean (B, 1, {T_new}, {T_total}); got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        if position_ids is None:
            position_ids = torch.arange(past_len, T_total, device=device)[None]  # (1, T_new)
    else:
        if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (B, T_total):
            raise ValueError(
                f"attention_mask must be (batch, cached + new tokens) = ({B}, {T_total}) with 1 for tokens and 0 "
                f"for padding; got {tuple(attention_mask.shape)}"
            )
        keep = attention_mask.to(device=device, dtype=torch.bool)  # (B, T_total)
        mask = causal_mask(T_new, T_total, device)[None, None] & keep[:, None, None, :]  # (B, 1, T_new, T_total)
        # A padding query may have no visible key at all; let it see every key so its (discarded) output stays finite.
        mask = mask | ~mask.any(dim=-1, keepdim=True)
        if position_ids is None:
            # Left padding: each row counts positions from its own first real token.
            position_ids = (keep.long().cumsum(-1) - 1).clamp(min=0)[:, past_len:]  # (B, T_new)
    if position_ids.shape[-1] != T_new:
        raise ValueError(f"position_ids must be (batch, {T_new}), got {tuple(position_ids.shape)}")
    return mask, position_ids
