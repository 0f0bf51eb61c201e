"""What a smaller cache costs in quality, measured on held-out windows: per-window NLL, paired differences with
their standard errors, teacher-forced decoding through a cache, and where the model's attention goes.

Every comparison here is paired: two models (or caches) score the same windows, and the quantity reported is the
mean over windows of the difference of their per-window mean NLL, with the standard error of that mean. A
difference smaller than about two standard errors is noise at this sample size, whatever its sign.

Shapes: B windows, T tokens per window, V vocabulary, L layers, nh heads.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..attention import causal_mask
from ..cache.contiguous import DynamicKVCache
from ..model.gpt2 import GPT2, repeat_kv


def windows(ids: torch.Tensor, context: int, n: int | None = None) -> torch.Tensor:
    """The first n non-overlapping windows (B, context) of a 1-D id tensor (all whole windows when n is None)."""
    count = ids.numel() // context if n is None else min(n, ids.numel() // context)
    return ids[: count * context].view(count, context)  # (B, T)


def spread(count: int, n: int) -> list[int]:
    """n window indices spread evenly over 0..count-1 (all of them when n >= count)."""
    if n >= count:
        return list(range(count))
    return [round(i * (count - 1) / (n - 1)) for i in range(n)] if n > 1 else [0]


@torch.inference_mode()
def window_nll(model: GPT2, x: torch.Tensor, mask: torch.Tensor | None = None,
               batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL (B, T-1) of each next token of x (B, T), uncached, and the argmax prediction (B, T-1) at each position.

    mask: a (T, T) boolean attention mask (e.g. sliding_window_mask) or None for causal attention. The last token
    is never an input (nothing follows it), so the model reads x[:, :-1]: causal, hence the same logits.
    """
    nll, top1 = [], []
    m = None if mask is None else mask[None, None, :-1, :-1]  # (1, 1, T-1, T-1)
    for chunk in x.split(batch_size):
        logits = model(chunk[:, :-1], attention_mask=m)  # (b, T-1, V), contiguous
        # Flattened (b·(T-1), V): the class dimension last is both faster and more exact in fp32 than (b, V, T-1).
        nll.append(F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="none")
                   .view(chunk.shape[0], -1))  # (b, T-1)
        top1.append(logits.argmax(-1))  # (b, T-1)
    return torch.cat(nll), torch.cat(top1)


def perplexity_of(nll: torch.Tensor) -> float:
    return math.exp(float(nll.double().mean()))


def per_window(nll: torch.Tensor) -> list[float]:
    """Mean NLL of each window (B, T-1) -> B floats: what paired comparisons use."""
    return [float(v) for v in nll.double().mean(1)]


def paired_difference(reference: list[float], other: list[float]) -> dict:
    """other minus reference, per window (mean NLL, nats): the mean, its standard error, the windows where other is
    worse, and the perplexity ratio exp(mean) (windows hold equal token counts, so it is the ratio of perplexities)."""
    if len(reference) != len(other) or len(reference) < 2:
        raise ValueError(f"need the same windows, at least 2, for both; got {len(reference)} and {len(other)}")
    d = torch.tensor(other, dtype=torch.float64) - torch.tensor(reference, dtype=torch.float64)  # (B,)
    mean, se = float(d.mean()), float(d.std(unbiased=True) / math.sqrt(d.numel()))
    return {"mean": mean, "se": se, "n": d.numel(), "worse": int((d > 0).sum()), "ratio": math.exp(mean),
            "ratio_low": math.exp(mean - 2 * se), "ratio_high": math.exp(mean + 2 * se)}


def is_noise(paired: dict, k: float = 2.0) -> bool:
    """True when the paired mean difference is within k standard errors of zero."""
    return abs(paired["mean"]) <= k * paired["se"]


@torch.inference_mode()
def compare_decoding(model: GPT2, x: torch.Tensor, make_cache) -> dict[str, torch.Tensor]:
    """Teacher-forced decoding of x (B, T) one token at a time with make_cache(), against the uncached model.

    The uncached logits are the reference: an fp32 cache gives the same (tests/test_cache.py). Returns per position
    (B, T-1): nll_ref, nll (the cache's), logit_err (max |Δlogit| over the vocabulary) and agree (same argmax).
    """
    ref = model(x[:, :-1])  # (B, T-1, V)
    target = x[:, 1:]  # (B, T-1)
    cache, out = make_cache(), {"nll": [], "logit_err": [], "agree": []}
    for t in range(x.shape[1] - 1):
        got = model(x[:, t:t + 1], cache)[:, -1]  # (B, V): predicts token t+1, old tokens read from the cache
        out["nll"].append(F.cross_entropy(got, target[:, t], reduction="none"))  # (B,)
        out["logit_err"].append((got - ref[:, t]).abs().amax(dim=-1))  # (B,)
        out["agree"].append(got.argmax(-1) == ref[:, t].argmax(-1))  # (B,)
    result = {k: torch.stack(v, dim=1) for k, v in out.items()}  # each (B, T-1)
    result["nll_ref"] = F.cross_entropy(ref.flatten(0, 1), target.flatten(), reduction="none").view_as(target)
    return result


@torch.inference_mode()
def first_token_attention(model: GPT2, x: torch.Tensor, start: int = 16) -> dict[str, list]:
    """Where attention goes: the softmax weight queries at positions >= start give to key 0, per layer and head.

    Returns "weight" (L, nh): the mean weight on key 0 over rows and windows; "ratio" (L, nh): the mean of that
    weight over the uniform share 1/(p+1) of the row at position p (1 = no preference; a sink is many times more).
    Recomputes each layer's attention weights from its input (captured by a hook) with the causal mask.
    """
    captured: dict[int, torch.Tensor] = {}
    hooks = [block.attn.register_forward_pre_hook(lambda m, args, i=i: captured.__setitem__(i, args[0]))
             for i, block in enumerate(model.transformer.h)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    c, (B, T) = model.config, x.shape
    uniform = 1.0 / torch.arange(start + 1, T + 1, dtype=torch.float64)  # (T - start,): 1/(p+1)
    weight, ratio = [], []
    for i, block in enumerate(model.transformer.h):
        kv = c.n_kv_head * c.head_dim
        q, k, _ = block.attn.c_attn(captured[i]).split([c.n_embd, kv, kv], dim=-1)
        q = q.view(B, T, c.n_head, c.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = repeat_kv(k.view(B, T, c.n_kv_head, c.head_dim).transpose(1, 2), c.n_kv_groups)  # (B, nh, T, hs)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(c.head_dim)  # (B, nh, T, T)
        probs = scores.masked_fill(~causal_mask(T, T), float("-inf")).softmax(-1)  # (B, nh, T, T)
        first = probs[:, :, start:, 0].double()  # (B, nh, T - start)
        weight.append([float(v) for v in first.mean((0, 2))])
        ratio.append([float(v) for v in (first / uniform).mean((0, 2))])
    return {"weight": weight, "ratio": ratio, "uniform": float(uniform.mean())}


@torch.inference_mode()
def reconstruction_error(model: GPT2, x: torch.Tensor, make_cache) -> dict[str, float]:
    """Relative error ||K_held - K|| / ||K|| (and V) of a cache after a prefill of x (B, T), mean over layers."""
    exact, cache = DynamicKVCache(), make_cache()
    model(x, exact), model(x, cache)
    err = {"key": 0.0, "value": 0.0}
    for layer in range(model.config.n_layer):
        for name, held, true in zip(err, cache.dequantized(layer), (exact.key_cache[layer], exact.value_cache[layer])):
            err[name] += float((held - true).norm() / true.norm()) / model.config.n_layer
    return err
