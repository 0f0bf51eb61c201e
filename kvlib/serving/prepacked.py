"""GPT-2's weight products with the weights laid out once for this CPU's matrix kernels (oneDNN's blocked layout,
what `torch.compile`'s freezing does to a linear layer on CPU), used by the engine's packed-rows forward.

Why: a serving step multiplies a few dozen rows by large weight matrices ("skinny" products). A plain (in, out) or
(out, in) matrix makes the kernel re-block the weight on every call; a prepacked one is read as it is stored.
Measured on the 2-core CPU of this project (the serving bench's `--part products`, 2026-12-05): the 49 products of
a GPT-2-small step about 1.2-1.3x faster at 16-48 rows, 1.3-1.5x at 3-8 rows, and no faster at 1 row.
The result equals `x @ W + b` up to float rounding (the sums run in another order).

Shapes: T rows (tokens), K inputs, N outputs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PrepackedLinear:
    """y = x W + b for a Conv1D-style weight W (K, N), with W reordered once into oneDNN's layout. `activation`
    "gelu_tanh" fuses GPT-2's GELU into the product (oneDNN's post-op). Falls back to addmm where oneDNN is absent
    or off the CPU. Not a module: it holds a read-only copy; `refresh()` rebuilds it after the weights change."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, activation: str = "none",
                 batch_hint: int = 48) -> None:
        if activation not in ("none", "gelu_tanh"):
            raise ValueError(f"activation must be 'none' or 'gelu_tanh', got {activation!r}")
        self.source, self.bias_source = weight, bias
        self.activation, self.batch_hint = activation, batch_hint
        self.refresh()

    def refresh(self) -> None:
        w = self.source.detach()
        self.fast = onednn_available() and w.device.type == "cpu" and w.dtype == torch.float32
        self.bias = None if self.bias_source is None else self.bias_source.detach()
        if self.fast:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), self.batch_hint)  # (N, K) packed
        else:
            self.packed = w  # (K, N)
        self.version = self.key()

    def key(self) -> tuple:
        b = self.bias_source
        return (self.source.data_ptr(), self.source._version, None if b is None else (b.data_ptr(), b._version))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(T, K) -> (T, N)."""
        if self.fast:
            if self.activation == "gelu_tanh":
                return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "gelu", [], "tanh")
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        y = x @ self.packed if self.bias is None else torch.addmm(self.bias, x, self.packed)  # (T, N)
        return F.gelu(y, approximate="tanh") if self.activation == "gelu_tanh" else y


def plain_linear(module: nn.Module, activation: str = "none"):
    """The readable product, as the model computes it: addmm(bias, x, W) with W (K, N)."""
    def linear(x: torch.Tensor) -> torch.Tensor:
        y = torch.addmm(module.bias, x, module.weight)  # (T, N)
        return F.gelu(y, approximate="tanh") if activation == "gelu_tanh" else y
    return linear
