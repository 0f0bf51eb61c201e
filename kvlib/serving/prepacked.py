"""GPT-2's weight products with the weights laid out once for this CPU's matrix kernels, used by the engine's
packed-rows forward: oneDNN's blocked layout (what `torch.compile`'s freezing does to a linear layer on CPU), and
for steps of one to three rows, the (out, in) layout of `nn.Linear`.

Why: a serving step multiplies a few dozen rows by large weight matrices ("skinny" products). A plain (in, out) or
(out, in) matrix makes the kernel re-block the weight on every call; a prepacked one is read as it is stored.
Measured on the 2-core CPU of this project (the serving bench's `--part products`, 2026-12-05): the 49 products of
a GPT-2-small step about 1.2-1.3x faster at 16-48 rows, 1.3-1.5x at 3-8 rows, and no faster at 1 row.

With one to three rows a product is almost a matrix-vector product: it reads every weight once and does little
else, and MKL's `sgemm` streams an (out, in) weight, one output's inputs after another, faster than oneDNN reads its
blocked layout. Measured here (2026-12-06, the 49 products of a GPT-2-small step, medians of 25 taken in turns, two
runs an hour apart): 0.89-0.96x oneDNN's time at 1 and 2 rows, 0.94-0.97x at 3, but 1.4x at 4 rows (MKL changes
kernels there; 29.6 against 20.8 ms): so up to `SMALL_ROWS` rows the plain layout, above it the blocked one. In the
engine's compiled decode step, taken in turns in one process: 0.95x the step at 2 rows, 0.96x at 3. The price is a
second copy of the layers' weights (4 bytes per weight: 340 MB for GPT-2 small; the LM head's (out, in) weight is
wte itself, no copy). The ShareGPT-like requests of the serving bench spend half their steps at three rows or fewer.

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


SMALL_ROWS = 3  # up to this many rows, MKL over the (N, K) weight; above, oneDNN over its blocked layout


class PrepackedLinear(nn.Module):
    """y = x W + b for a Conv1D-style weight W (K, N), with W reordered once into oneDNN's layout, and kept once as
    (N, K) for products of at most `small_rows` rows. `activation` "gelu_tanh" fuses GPT-2's GELU into the product
    (oneDNN's post-op). Falls back to addmm where oneDNN is absent or off the CPU. Holds read-only copies as buffers
    (torch.compile's freezing folds them into a compiled graph); `refresh()` rebuilds them after the weights change."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, activation: str = "none",
                 batch_hint: int = 48, small_rows: int = SMALL_ROWS) -> None:
        super().__init__()
        if activation not in ("none", "gelu_tanh"):
            raise ValueError(f"activation must be 'none' or 'gelu_tanh', got {activation!r}")
        if isinstance(small_rows, bool) or not isinstance(small_rows, int) or small_rows < 0:
            raise ValueError(f"small_rows must be an int >= 0 (0: oneDNN's layout for every product), "
                             f"got {small_rows!r}")
        self.source, self.bias_source = weight, bias
        self.activation, self.batch_hint, self.small_rows = activation, batch_hint, small_rows
        self.refresh()

    def refresh(self) -> None:
        w = self.source.detach()
        self.fast = onednn_available() and w.device.type == "cpu" and w.dtype == torch.float32
        bias = None if self.bias_source is None else self.bias_source.detach()
        weight_nk = w.t().contiguous() if self.fast else None  # (N, K): a copy, or w's own (N, K) tensor (LM head)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight_nk, self.batch_hint) if self.fast else w
        self.register_buffer("packed", packed, persistent=False)  # (N, K) packed, or the (K, N) weight itself
        self.register_buffer("weight_nk", weight_nk, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.version = self.key()

    def key(self) -> tuple:
        b = self.bias_source
        return (self.source.data_ptr(), self.source._version, None if b is None else (b.data_ptr(), b._version))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(T, K) -> (T, N). In a compiled graph the row test is a guard: one graph for each side of it."""
        if not self.fast:
            y = x @ self.packed if self.bias is None else torch.addmm(self.bias, x, self.packed)  # (T, N)
        elif x.shape[0] <= self.small_rows:
            y = F.linear(x, self.weight_nk, self.bias)  # (T, N): MKL's sgemm over the (N, K) weight
        elif self.activation == "gelu_tanh":
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "gelu", [], "tanh")
        else:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
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
    head (tied to wte), prepacked or plain. One per (model, prepack), shared: `GPT2Products.for_model` (the engine's:
    small_rows=SMALL_ROWS; the serving bench also builds one with small_rows=0, oneDNN's layout at every size)."""

    _cache: "weakref.WeakKeyDictionary[nn.Module, dict[bool, GPT2Products]]" = weakref.WeakKeyDictionary()

    def __init__(self, model: nn.Module, prepack: bool = True, small_rows: int = SMALL_ROWS) -> None:
        super().__init__()
        self.prepack = prepack
        if prepack:
            make = lambda m, act="none": PrepackedLinear(m.weight, m.bias, activation=act,  # noqa: E731
                                                         small_rows=small_rows)
            # (C, V) view of the (V, C) weight
            self.lm_head = PrepackedLinear(model.lm_head.weight.t(), None, small_rows=small_rows)
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
