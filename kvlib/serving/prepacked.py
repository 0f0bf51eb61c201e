"""GPT-2's weight products with the weights laid out once for this CPU's matrix kernels (oneDNN's blocked layout,
what `torch.compile`'s freezing does to a linear layer on CPU), used by the engine's packed-rows forward.

Why: a serving step multiplies a few dozen rows by large weight matrices ("skinny" products). A plain (in, out) or
(out, in) matrix makes the kernel re-block the weight on every call; a prepacked one is read as it is stored.
Measured on the 2-core CPU of this project (the serving bench's `--part products`, 2026-12-05): the 49 products of
a GPT-2-small step about 1.2-1.3x faster at 16-48 rows, 1.3-1.5x at 3-8 rows, and no faster at 1 row.
The result equals `x @ W + b` up to float rounding (the sums run in another order).

The copies are made once per model (`GPT2Products.for_model`) and shared by every engine that serves it.

Shapes: T rows (tokens), K inputs, N outputs.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PrepackedLinear(nn.Module):
    """y = x W + b for a Conv1D-style weight W (K, N), with W reordered once into oneDNN's layout. `activation`
    "gelu_tanh" fuses GPT-2's GELU into the product (oneDNN's post-op). Falls back to addmm where oneDNN is absent
    or off the CPU. Holds a read-only copy as a buffer (torch.compile's freezing folds it into a compiled graph);
    `refresh()` rebuilds it after the weights change."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, activation: str = "none",
                 batch_hint: int = 48) -> None:
        super().__init__()
        if activation not in ("none", "gelu_tanh"):
            raise ValueError(f"activation must be 'none' or 'gelu_tanh', got {activation!r}")
        self.source, self.bias_source = weight, bias
        self.activation, self.batch_hint = activation, batch_hint
        self.refresh()

    def refresh(self) -> None:
        w = self.source.detach()
        self.fast = onednn_available() and w.device.type == "cpu" and w.dtype == torch.float32
        bias = None if self.bias_source is None else self.bias_source.detach()
        packed = torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), self.batch_hint) if self.fast else w
        self.register_buffer("packed", packed, persistent=False)  # (N, K) packed, or the (K, N) weight itself
        self.register_buffer("bias", bias, persistent=False)
        self.version = self.key()

    def key(self) -> tuple:
        b = self.bias_source
        return (self.source.data_ptr(), self.source._version, None if b is None else (b.data_ptr(), b._version))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(T, K) -> (T, N)."""
        if self.fast:
            if self.activation == "gelu_tanh":
                return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "gelu", [], "tanh")
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        y = x @ self.packed if self.bias is None else torch.addmm(self.bias, x, self.packed)  # (T, N)
        return F.gelu(y, approximate="tanh") if self.activation == "gelu_tanh" else y


class PlainLinear(nn.Module):
    """The readable product, as the model computes it: addmm(bias, x, W) with the model's own W (K, N)."""

    def __init__(self, module: nn.Module, activation: str = "none") -> None:
        super().__init__()
        self.module, self.activation = module, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.addmm(self.module.bias, x, self.module.weight)  # (T, N)
        return F.gelu(y, approximate="tanh") if self.activation == "gelu_tanh" else y


class GPT2Products(nn.Module):
    """Every weight product of a GPT-2, per layer (qkv, attention output, MLP in with its GELU, MLP out) and the LM
    head (tied to wte), prepacked or plain. One per (model, prepack), shared: `GPT2Products.for_model`."""

    _cache: "weakref.WeakKeyDictionary[nn.Module, dict[bool, GPT2Products]]" = weakref.WeakKeyDictionary()

    def __init__(self, model: nn.Module, prepack: bool = True) -> None:
        super().__init__()
        self.prepack = prepack
        if prepack:
            make = lambda m, act="none": PrepackedLinear(m.weight, m.bias, activation=act)  # noqa: E731
            self.lm_head = PrepackedLinear(model.lm_head.weight.t(), None)  # (C, V) view of the (V, C) weight
        else:
            make = PlainLinear
            self.lm_head = model.lm_head
        self.layers = nn.ModuleList(
            nn.ModuleList([make(b.attn.c_attn), make(b.attn.c_proj), make(b.mlp.c_fc, "gelu_tanh"), make(b.mlp.c_proj)])
            for b in model.transformer.h)
        self._prepacked = [p for p in self.modules() if isinstance(p, PrepackedLinear)]
        self._params = list(model.parameters())  # the model's weights, not the model: see refresh_if_stale
        self.weights_version = self._version_sum()

    @classmethod
    def for_model(cls, model: nn.Module, prepack: bool = True) -> "GPT2Products":
        per_model = cls._cache.setdefault(model, {})
        if prepack not in per_model:
            per_model[prepack] = cls(model, prepack)
        return per_model[prepack]

    def _version_sum(self) -> int:
        return sum(p._version for p in self._params)  # every in-place change bumps a tensor's version

    def refresh_if_stale(self) -> bool:
        """True if any of the model's weights changed in place (load_state_dict, an optimizer step) since the last
        check, after rebuilding the prepacked copies (a compiled graph that froze the weights must compile again).
        A cheap check, made every step."""
        version = self._version_sum()
        if version == self.weights_version:
            return False
        for p in self._prepacked:
            p.refresh()
        self.weights_version = version
        return True
