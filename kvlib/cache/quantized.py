"""A quantized KV cache (KIVI-style): old tokens as int8 or int4 codes, the most recent ones in full precision.

Each layer holds, for K and for V:
- quantized: codes (B, nkv, T_q, hs · nbits/8) uint8, plus a scale and a zero point per group (kvlib.cache.quantization);
- residual: the last tokens in full precision, (B, nkv, T_res, hs), R = residual_length <= T_res < R + unit.
A token enters the residual window; when more than R tokens wait there, the oldest whole multiple of `unit` tokens
(group_size when keys or values are grouped along tokens, else 1) is quantized and leaves it. To attend, the codes
are dequantized and the residual appended: attention itself is unchanged, it just reads approximate old K/V.
The new tokens of a step are always seen in full precision by that step (they are quantized after it, as in
transformers' QuantizedCache), so a prefill's logits are exact.

Shapes: B batch, nkv = n_kv_head K/V heads, hs head size, T_new tokens fed this call, T_total = tokens fed so far.
"""
from __future__ import annotations

import torch

from ..config import GPT2Config
from .contiguous import resolve_crop
from .quantization import check_quant_args, dequantize, flush_unit, quantize
from .sliding_window import check_model_config, check_states_for


class QuantizedKVCache:
    """K and V of one request, quantized to nbits once they leave a full-precision window of residual_length tokens.

    key_quant/value_quant: "channel" groups group_size tokens of one channel, "token" group_size channels of one
    token (KIVI: keys per channel, values per token). group_size defaults to head_dim and must divide it.
    """

    def __init__(self, config: GPT2Config, nbits: int = 8, *, key_quant: str = "channel", value_quant: str = "token",
                 group_size: int | None = None, residual_length: int = 128) -> None:
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a kvlib.GPT2Config (e.g. model.config), got {type(config).__name__}")
        group_size = config.head_dim if group_size is None else group_size
        check_quant_args(nbits, key_quant, value_quant, group_size, residual_length, config.head_dim)
        self.config, self.nbits, self.group_size, self.residual_length = config, nbits, group_size, residual_length
        self.axes = (key_quant, value_quant)  # for K, for V
        self.unit = flush_unit(key_quant, value_quant, group_size)
        # Per layer, for K (index 0) and V (index 1): lists of quantized blocks [(codes, scale, zero), ...] joined
        # along tokens, and the full-precision residual.
        self.quantized: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]] = []
        self.residual: list[list[torch.Tensor]] = []
        self._seen = [0] * config.n_layer

    def check_config(self, config: GPT2Config) -> None:
        check_model_config(self.config, config, type(self).__name__)

    def _dequantized(self, layer_idx: int, i: int) -> torch.Tensor | None:
        q = self.quantized[layer_idx][i]
        return None if q is None else dequantize(*q, self.nbits, self.axes[i], self.group_size)  # (B, nkv, T_q, hs)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, nkv, T_new, hs) states; return (B, nkv, T_total, hs) keys and values (old ones dequantized)."""
        check_states_for(self.config, type(self).__name__, key_states, value_states, layer_idx)
        if layer_idx == len(self.residual):  # first call for this layer
            self.quantized.append([None, None])
            self.residual.append([key_states[:, :, :0].clone(memory_format=torch.contiguous_format)] * 2)
        elif layer_idx > len(self.residual):
            raise ValueError(f"layer_idx must be in 0..{len(self.residual)} (layers are filled in order), got {layer_idx}")
        held = self.residual[layer_idx][0]
        if key_states.shape[0] != held.shape[0] or key_states.dtype != held.dtype:
            raise ValueError(f"this cache holds batch {held.shape[0]} of {held.dtype}; got batch {key_states.shape[0]} "
                             f"of {key_states.dtype}: use one cache per request")
        out = []
        for i, states in enumerate((key_states, value_states)):
            residual = torch.cat([self.residual[layer_idx][i], states], dim=-2)  # (B, nkv, T_res + T_new, hs)
            old = self._dequantized(layer_idx, i)
            out.append(residual if old is None else torch.cat([old, residual], dim=-2))  # (B, nkv, T_total, hs)
            n_flush = max(0, residual.shape[-2] - self.residual_length) // self.unit * self.unit
            if n_flush:  # the oldest n_flush tokens leave the window: quantize them, append to the codes
                block = quantize(residual[:, :, :n_flush], self.nbits, self.axes[i], self.group_size)
                q = self.quantized[layer_idx][i]
                self.quantized[layer_idx][i] = block if q is None else tuple(
                    torch.cat([a, b], dim=2) for a, b in zip(q, block))
            # clone: a view would keep the whole concatenated tensor (and its bytes) alive
            self.residual[layer_idx][i] = residual[:, :, n_flush:].clone()
        self._seen[layer_idx] += key_states.shape[-2]
        return out[0], out[1]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._seen[layer_idx]

    def quantized_length(self, layer_idx: int = 0) -> int:
        """Tokens of layer layer_idx held as codes (the rest are in the residual window)."""
        return self._seen[layer_idx] - (self.residual[layer_idx][0].shape[-2] if layer_idx < len(self.residual) else 0)

    def dequantized(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, nkv, T_total, hs) keys and values the next step attends to (old tokens as stored, approximate)."""
        return tuple(torch.cat([t for t in (self._dequantized(layer_idx, i), self.residual[layer_idx][i])
                                if t is not None], dim=-2) for i in range(2))

    def crop(self, max_length: int) -> None:
        """Keep the first max_length tokens (negative: drop that many). The dropped tokens must still be in the
        full-precision residual window, where they are sliced off: codes cannot be cut back (a group of group_size
        tokens shares one scale), so a forward of more new tokens than residual_length cannot be rolled back.

        What cannot be undone: a forward that flushed accepted tokens into codes leaves them quantized, a few steps
        earlier than plain decoding would quantize them (the flush depended on the rejected tokens too).
        """
        keep = resolve_crop(max_length, self.get_seq_length(), type(self).__name__)
        quantized = self.quantized_length()
        if keep < quantized:
            raise ValueError(f"{type(self).__name__} cannot roll back to {keep} tokens: the first {quantized} are "
                             "already int codes (they left the full-precision window). Keep every forward that may "
                             f"be rolled back within the window: residual_length ({self.residual_length}) >= "
                             "new tokens per forward (num_draft_tokens + 1)")
        self.residual = [[r[:, :, :keep - quantized] for r in layer] for layer in self.residual]  # (B, nkv, T_res, hs)
        self._seen = [keep] * len(self._seen)

    @property
    def batch_size(self) -> int | None:
        return self.residual[0][0].shape[0] if self.residual else None

    def reset(self) -> None:
        self.quantized.clear()
        self.residual.clear()
        self._seen = [0] * len(self._seen)

    @property
    def nbytes(self) -> int:
        """Bytes held, all layers: codes, scales and zero points of quantized tokens, plus the residual window."""
        tensors = [t for layer in self.quantized for q in layer if q is not None for t in q]
        tensors += [t for layer in self.residual for t in layer]
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def nbytes_allocated(self) -> int:
        """Equal to nbytes: every held tensor is exactly sized (nothing reserved ahead)."""
        return self.nbytes

    def __len__(self) -> int:
        return len(self.residual)

    def __repr__(self) -> str:
        return (f"QuantizedKVCache(nbits={self.nbits}, key_quant={self.axes[0]!r}, value_quant={self.axes[1]!r}, "
                f"group_size={self.group_size}, residual_length={self.residual_length}, "
                f"seq_length={self.get_seq_length()}, quantized={self.quantized_length()}, nbytes={self.nbytes})")
