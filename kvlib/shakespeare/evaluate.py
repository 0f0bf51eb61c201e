"""Language-model quality: perplexity of a model on a stream of token ids.

Shapes: N token ids, W windows, T tokens per window (= context), V vocabulary.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..model.gpt2 import GPT2


@torch.no_grad()
def token_nll(model: GPT2, ids: torch.Tensor, context: int | None = None, batch_size: int = 8) -> torch.Tensor:
    """Negative log-likelihood (nats) of every predicted token of 1-D ids, scored in non-overlapping windows.

    The stream is cut into windows of `context` tokens (default: the model's n_positions); inside each window
    token i is predicted from tokens 0..i-1 of that window, so the first token of a window is never predicted.
    Returns a 1-D float tensor of W * (T - 1) values (a last window shorter than 2 tokens is dropped).
    """
    context = context or model.config.n_positions
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D tensor of token ids, got {type(ids).__name__} "
                         f"{tuple(getattr(ids, 'shape', ()))}")
    if not 2 <= context <= model.config.n_positions:
        raise ValueError(f"context must be in [2, n_positions={model.config.n_positions}], got {context}")
    ids = ids.long()
    n_full = len(ids) // context
    windows = [ids[i * context:(i + 1) * context] for i in range(n_full)]  # W x (T,)
    if len(ids) - n_full * context >= 2:
        windows.append(ids[n_full * context:])
    if not windows:
        raise ValueError(f"need at least 2 token ids to score, got {len(ids)}")
    out = []
    device = model.lm_head.weight.device
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        same = [w for w in chunk if len(w) == len(chunk[0])]
        for group in (same, [w for w in chunk if len(w) != len(chunk[0])]):
            if not group:
                continue
            x = torch.stack(group).to(device)  # (b, T)
            logits = model(x[:, :-1]).float()  # (b, T - 1, V)
            out.append(F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="none"))
    return torch.cat(out)


def perplexity(model: GPT2, ids: torch.Tensor, context: int | None = None, batch_size: int = 8) -> float:
    """exp(mean NLL) over every predicted token of 1-D ids, in non-overlapping windows of `context` tokens."""
    return math.exp(float(token_nll(model, ids, context, batch_size).mean()))
