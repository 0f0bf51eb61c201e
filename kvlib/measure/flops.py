"""FLOPs of GPT-2 inference with and without a KV cache: exact formulas, and a measurement that checks them.

Shapes: B batch, T_new tokens fed to one forward, T_total = cached + T_new keys each new query attends to,
C = n_embd channels, L layers, V vocabulary, t the sequence length a generation step sees, n generated tokens.

Convention (torch.utils.flop_counter's): a multiply-add counts as 2 FLOPs, so an (m, k) @ (k, n) product is
2·m·k·n. Only matrix products are counted: QKᵀ and AV (attention), the four weight matrices of every block
(c_attn for Q/K/V, attn.c_proj, mlp.c_fc, mlp.c_proj) and the LM head. FlopCounterMode does not count biases,
LayerNorm, softmax, GELU, the 1/√hs scaling, masking, embedding lookups or the cache's concatenation, and
neither do these formulas. Per forward:

    linear    = 24·B·T_new·C²·L        (c_attn 6, attn.c_proj 2, mlp.c_fc 8, mlp.c_proj 8, all × B·T_new·C²)
    attention =  4·B·T_new·T_total·C·L (QKᵀ and AV, 2·B·T_new·T_total·C each, summed over heads)
    lm_head   =  2·B·K·C·V             (K = positions that get logits: T_new, or logits_to_keep)

The eager attention multiplies the full T_new × T_total score matrix and masks it afterwards, so the causal
half that is thrown away is counted too: that is the work the code does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..cache.contiguous import DynamicKVCache
from ..config import GPT2Config
from ..model.gpt2 import GPT2, Conv1D, GPT2Attention


@dataclass(frozen=True)
class FlopCount:
    """FLOPs split by where they are spent (all layers, whole batch)."""

    attention: int  # QKᵀ and AV: ∝ T_new·T_total·C
    linear: int  # the blocks' weight matrices (Q/K/V and output projections, MLP): ∝ T_new·C²
    lm_head: int  # logits: ∝ positions·C·V

    @property
    def rest(self) -> int:
        """Everything but attention, LM head included (use `linear` for the rest without it)."""
        return self.linear + self.lm_head

    @property
    def total(self) -> int:
        return self.attention + self.linear + self.lm_head

    def __add__(self, other: "FlopCount") -> "FlopCount":
        if not isinstance(other, FlopCount):
            return NotImplemented
        return FlopCount(self.attention + other.attention, self.linear + other.linear, self.lm_head + other.lm_head)


def _check_config(config: Any) -> None:
    if not isinstance(config, GPT2Config):
        raise TypeError(f"config must be a kvlib.GPT2Config, got {type(config).__name__}")


def _check_model(model: Any) -> None:
    if not isinstance(model, GPT2):
        raise TypeError(f"model must be a kvlib.GPT2, got {type(model).__name__}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def forward_flops(
    config: GPT2Config, T_new: int, T_total: int, *, batch_size: int = 1, logits_to_keep: int = 0
) -> FlopCount:
    """FLOPs of one `GPT2.forward` feeding T_new tokens whose queries attend to T_total keys.

    logits_to_keep: as in `GPT2.forward` (0 = logits for all T_new positions). T_total may exceed
    config.n_positions: the formula then describes a GPT-2 with longer position tables (to find crossovers).
    """
    _check_config(config)
    _check_int("T_new", T_new, 1)
    _check_int("T_total", T_total, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("logits_to_keep", logits_to_keep, 0)
    if T_new > T_total:
        raise ValueError(f"T_new ({T_new}) cannot exceed T_total ({T_total}): the keys include the new tokens")
    B, C, L, V = batch_size, config.n_embd, config.n_layer, config.vocab_size
    positions = T_new if logits_to_keep == 0 else min(logits_to_keep, T_new)  # x[:, -logits_to_keep:]
    return FlopCount(
        attention=4 * B * T_new * T_total * C * L,
        linear=24 * B * T_new * C * C * L,
        lm_head=2 * B * positions * C * V,
    )


def step_flops(config: GPT2Config, t: int, *, use_cache: bool, batch_size: int = 1) -> FlopCount:
    """FLOPs of the generation step that sees a sequence of t tokens and predicts token t + 1.

    Without a cache the step re-feeds all t tokens (T_new = T_total = t): linear ∝ t·C², attention ∝ t²·C.
    With one it feeds only the newest token (T_new = 1, T_total = t): linear ∝ C², attention ∝ t·C.
    Either way only the last position gets logits, as in `kvlib.generate`.
    """
    if not isinstance(use_cache, bool):
        raise TypeError(f"use_cache must be True or False, got {use_cache!r}")
    _check_int("t", t, 1)
    return forward_flops(config, 1 if use_cache else t, t, batch_size=batch_size, logits_to_keep=1)


def _sum_range(a: int, b: int, power: int) -> int:
    """Σ_{t=a}^{b} t**power for power 1 or 2, in exact integer arithmetic (0 for an empty range)."""
    if b < a:
        return 0
    prefix = {1: lambda m: m * (m + 1) // 2, 2: lambda m: m * (m + 1) * (2 * m + 1) // 6}[power]
    return prefix(b) - prefix(a - 1)


def generation_flops(
    config: GPT2Config, prompt_len: int, max_new_tokens: int, *, use_cache: bool, batch_size: int = 1
) -> FlopCount:
    """Total FLOPs of `kvlib.generate(model, prompt, max_new_tokens, use_cache=...)` (no early stop), in closed form.

    Step s = 0 .. n-1 sees t = prompt_len + s tokens. Without a cache every step is a full forward:
        linear = 24·B·C²·L·Σt,  attention = 4·B·C·L·Σt²        -> O(n²·C² + n³·C) for a short prompt.
    With one, step 0 is the prefill (a full forward over the prompt) and each later step feeds one token:
        linear = 24·B·C²·L·(p + n - 1),  attention = 4·B·C·L·(p² + Σ_{t>p} t)   -> O(n·C² + n²·C).
    Both pay the LM head once per step: 2·B·C·V·n.
    """
    if not isinstance(use_cache, bool):
        raise TypeError(f"use_cache must be True or False, got {use_cache!r}")
    _check_config(config)
    _check_int("prompt_len", prompt_len, 1)
    _check_int("max_new_tokens", max_new_tokens, 0)
    _check_int("batch_size", batch_size, 1)
    n, p = max_new_tokens, prompt_len
    if n == 0:
        return FlopCount(0, 0, 0)
    B, C, L, V = batch_size, config.n_embd, config.n_layer, config.vocab_size
    last = p + n - 1  # the longest sequence a step sees
    if use_cache:
        tokens_fed = p + (n - 1)
        query_key_pairs = p * p + _sum_range(p + 1, last, 1)  # prefill's p × p scores, then t per step
    else:
        tokens_fed = _sum_range(p, last, 1)
        query_key_pairs = _sum_range(p, last, 2)
    return FlopCount(
        attention=4 * B * C * L * query_key_pairs,
        linear=24 * B * C * C * L * tokens_fed,
        lm_head=2 * B * C * V * n,
    )


def attention_crossover(config: GPT2Config, *, use_cache: bool, include_lm_head: bool = True) -> int:
    """The smallest sequence length t at which a generation step's attention FLOPs reach the rest.

    "The rest" is linear + lm_head, or linear alone with include_lm_head=False. Found by an exact integer
    search over `step_flops`, so the result may lie beyond config.n_positions (GPT-2 cannot run there).
    Closed forms: without the LM head t = 6·C, cached or not (attention/linear = T_total / 6C for any T_new);
    with it, cached: t = ⌈6C + V / 2L⌉; uncached: the smallest t with 2L·t² - 12LC·t - V ≥ 0.
    """
    if not isinstance(include_lm_head, bool):
        raise TypeError(f"include_lm_head must be True or False, got {include_lm_head!r}")

    def reached(t: int) -> bool:
        f = step_flops(config, t, use_cache=use_cache)
        return f.attention >= (f.rest if include_lm_head else f.linear)

    high = 1
    while not reached(high):  # the attention share grows with t, so doubling must get there
        high *= 2
    low = high // 2  # reached(low) is False unless high == 1
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if reached(mid) else (mid, high)
    return high


def measure_flops(model: GPT2, fn: Callable[[], Any]) -> FlopCount:
    """Run fn() (which should call `model`) under FlopCounterMode and split the count by module.

    attention = what each GPT2Attention module counts minus its c_attn and c_proj; linear = all Conv1D
    modules; lm_head = the remainder (the logits are computed by GPT2 itself, outside any submodule).
    With attn_implementation="sdpa" on CPU the fused kernel is not counted: attention comes out 0.
    """
    _check_model(model)
    if not callable(fn):
        raise TypeError(f"fn must be a callable that runs the model, got {type(fn).__name__}")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    counts = counter.get_flop_counts()  # {"Global" or "GPT2.transformer.h.0.attn" ...: {op: flops}}
    root = type(model).__name__  # FlopCounterMode names modules from the root's class name

    def flops_of(name: str) -> int:
        return sum(counts.get(f"{root}.{name}", {}).values())

    linear = sum(flops_of(name) for name, m in model.named_modules() if isinstance(m, Conv1D))
    attention = sum(
        flops_of(name) - flops_of(f"{name}.c_attn") - flops_of(f"{name}.c_proj")
        for name, m in model.named_modules() if isinstance(m, GPT2Attention)
    )
    total = sum(counts.get("Global", {}).values())
    return FlopCount(attention=attention, linear=linear, lm_head=total - attention - linear)


def measure_forward_flops(
    model: GPT2, T_new: int, T_total: int, *, batch_size: int = 1, logits_to_keep: int = 0
) -> FlopCount:
    """Measured FLOPs of one forward of T_new tokens after T_total - T_new cached ones (the `forward_flops` case).

    The cache is filled with zeros rather than by a real prefill: FLOPs depend on shapes, not values, and
    this keeps a measurement at position 1000 as cheap as one decode step.
    """
    _check_model(model)
    forward_flops(model.config, T_new, T_total, batch_size=batch_size, logits_to_keep=logits_to_keep)  # validates
    w = model.lm_head.weight
    cache = None
    if T_total > T_new:
        cache = DynamicKVCache()
        c = model.config
        past = torch.zeros(batch_size, c.n_kv_head, T_total - T_new, c.head_dim, dtype=w.dtype, device=w.device)
        for layer_idx in range(c.n_layer):
            cache.update(past, past, layer_idx)  # (B, nh, T_total - T_new, hs) per layer
    input_ids = torch.zeros(batch_size, T_new, dtype=torch.long, device=w.device)  # (B, T_new)
    return measure_flops(model, lambda: model(input_ids, cache, logits_to_keep=logits_to_keep))


def measure_step_flops(model: GPT2, t: int, *, use_cache: bool, batch_size: int = 1) -> FlopCount:
    """Measured FLOPs of the generation step that sees t tokens (the `step_flops` case)."""
    _check_model(model)
    step_flops(model.config, t, use_cache=use_cache, batch_size=batch_size)  # validates the arguments
    return measure_forward_flops(model, 1 if use_cache else t, t, batch_size=batch_size, logits_to_keep=1)
