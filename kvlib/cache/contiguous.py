"""KV caches: one request's keys and values, per layer, in HF's (batch, num_heads, seq_len, head_dim) layout.

The model holds no state; the caller creates a cache, passes it to every forward of one request, and drops it.
Two kinds:
- DynamicKVCache grows by concatenation, like transformers' DynamicCache: each step allocates a tensor one
  token longer and copies the old keys into it.
- StaticKVCache preallocates (B, nh, max_seq_len, hs) buffers and writes each new token in place; `update`
  returns only the filled prefix, so attention never sees the unfilled zero slots.
"""
from __future__ import annotations

import torch

from ..config import GPT2Config


def _check_states(key_states: torch.Tensor, value_states: torch.Tensor) -> None:
    if not isinstance(key_states, torch.Tensor) or not isinstance(value_states, torch.Tensor):
        raise TypeError("key_states and value_states must be tensors")
    if key_states.dim() != 4 or key_states.shape != value_states.shape:
        raise ValueError(
            "key_states and value_states must both be (batch, num_heads, seq_len, head_dim); "
            f"got {tuple(key_states.shape)} and {tuple(value_states.shape)}"
        )


def resolve_crop(max_length: int, seq_length: int, kind: str) -> int:
    """How many tokens a cache holding seq_length keeps after crop(max_length): max_length, or seq_length +
    max_length when it is negative (transformers' crop(-n) removes the last n). Raises unless 0 <= kept <= held."""
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise TypeError(f"max_length must be an int (negative: tokens to remove), got {type(max_length).__name__}")
    keep = seq_length + max_length if max_length < 0 else max_length
    if keep < 0:
        raise ValueError(f"cannot roll back {-max_length} tokens: this {kind} holds {seq_length} (a rollback past "
                         "the start of the cache)")
    if keep > seq_length:
        raise ValueError(f"cannot crop to {max_length} tokens: this {kind} holds {seq_length}; crop only removes "
                         "tokens from the end")
    return keep


class DynamicKVCache:
    """Grows by `torch.cat` along the sequence axis (dim -2) on every update."""

    def __init__(self) -> None:
        self.key_cache: list[torch.Tensor] = []  # per layer: (B, nh, T_total, hs)
        self.value_cache: list[torch.Tensor] = []

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, nh, T_new, hs) states to layer `layer_idx`; return all (B, nh, T_total, hs) keys and values."""
        _check_states(key_states, value_states)
        if layer_idx == len(self.key_cache):  # first call for this layer
            # Copy: the states are views into the fused q|k|v projection output, and keeping a view keeps that
            # whole storage alive, queries included (1.5x the bytes of K and V). HF's DynamicCache copies too.
            self.key_cache.append(key_states.clone(memory_format=torch.contiguous_format))
            self.value_cache.append(value_states.clone(memory_format=torch.contiguous_format))
            return self.key_cache[layer_idx], self.value_cache[layer_idx]
        if not 0 <= layer_idx < len(self.key_cache):
            raise ValueError(f"layer_idx must be in 0..{len(self.key_cache)} (layers are filled in order), got {layer_idx}")
        old = self.key_cache[layer_idx]
        if (old.shape[0], old.shape[1], old.shape[3]) != (key_states.shape[0], key_states.shape[1], key_states.shape[3]):
            raise ValueError(
                f"this cache holds (batch, heads, head_dim) = {(old.shape[0], old.shape[1], old.shape[3])}, "
                f"got states for {(key_states.shape[0], key_states.shape[1], key_states.shape[3])}: "
                "use one cache per request (or reset() it)"
            )
        self.key_cache[layer_idx] = torch.cat([old, key_states], dim=-2)  # (B, nh, T_total, hs): a new copy
        self.value_cache[layer_idx] = torch.cat([self.value_cache[layer_idx], value_states], dim=-2)
        return self.key_cache[layer_idx], self.value_cache[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens cached so far (0 before the first update)."""
        return self.key_cache[layer_idx].shape[-2] if layer_idx < len(self.key_cache) else 0

    @property
    def batch_size(self) -> int | None:
        return self.key_cache[0].shape[0] if self.key_cache else None

    def reset(self) -> None:
        self.key_cache.clear()
        self.value_cache.clear()

    def crop(self, max_length: int) -> None:
        """Keep the first max_length tokens of every layer (negative: drop that many from the end), as transformers'
        DynamicCache.crop does after verifying a speculative draft. A slice, no copy: until the next update's cat
        reallocates, the view keeps the dropped tokens' storage alive."""
        keep = resolve_crop(max_length, self.get_seq_length(), type(self).__name__)
        for i in range(len(self.key_cache)):
            self.key_cache[i] = self.key_cache[i][:, :, :keep]  # (B, nh, keep, hs)
            self.value_cache[i] = self.value_cache[i][:, :, :keep]

    @property
    def nbytes(self) -> int:
        """Bytes of K and V held, all layers."""
        return sum(t.numel() * t.element_size() for t in self.key_cache + self.value_cache)

    @property
    def nbytes_allocated(self) -> int:
        """Bytes of the tensors this cache keeps alive (equal to `nbytes`: nothing is reserved ahead)."""
        return self.nbytes

    def __len__(self) -> int:
        return len(self.key_cache)

    def __repr__(self) -> str:
        return f"DynamicKVCache(layers={len(self)}, seq_length={self.get_seq_length()}, nbytes={self.nbytes})"


class StaticKVCache:
    """Preallocated (B, nh, max_seq_len, hs) buffers for every layer, written in place at the next free slot."""

    def __init__(
        self,
        config: GPT2Config,
        batch_size: int,
        max_seq_len: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a kvlib.GPT2Config, got {type(config).__name__}")
        for name, value in (("batch_size", batch_size), ("max_seq_len", max_seq_len)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype}")
        self.max_seq_len = max_seq_len
        shape = (batch_size, config.n_kv_head, max_seq_len, config.head_dim)  # (B, nh, max_seq_len, hs)
        self.key_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.value_cache = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self._lengths = [0] * config.n_layer  # filled slots per layer

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, nh, T_new, hs) states into the next free slots; return the filled (B, nh, T_total, hs) prefix."""
        _check_states(key_states, value_states)
        if not 0 <= layer_idx < len(self.key_cache):
            raise ValueError(f"layer_idx must be in 0..{len(self.key_cache) - 1}, got {layer_idx}")
        buffer = self.key_cache[layer_idx]
        B, nh, _, hs = buffer.shape
        if (key_states.shape[0], key_states.shape[1], key_states.shape[3]) != (B, nh, hs):
            raise ValueError(
                f"this StaticKVCache was built for (batch, heads, head_dim) = {(B, nh, hs)}, got states for "
                f"{(key_states.shape[0], key_states.shape[1], key_states.shape[3])}"
            )
        if key_states.dtype != buffer.dtype or key_states.device != buffer.device:
            raise TypeError(
                f"this StaticKVCache holds {buffer.dtype} on {buffer.device}, got {key_states.dtype} on "
                f"{key_states.device}: build the cache with the model's dtype and device"
            )
        start = self._lengths[layer_idx]
        end = start + key_states.shape[-2]
        if end > self.max_seq_len:
            raise ValueError(
                f"StaticKVCache overflow: {start} cached + {key_states.shape[-2]} new tokens exceeds "
                f"max_seq_len={self.max_seq_len}; build the cache with a larger max_seq_len"
            )
        buffer[:, :, start:end] = key_states  # in place: no reallocation, no copy of the past
        self.value_cache[layer_idx][:, :, start:end] = value_states
        self._lengths[layer_idx] = end
        # Only the filled prefix: slots end..max_seq_len are zeros, and a query attending to them would give
        # them softmax weight (exp(q·0) = 1 each).
        return buffer[:, :, :end], self.value_cache[layer_idx][:, :, :end]  # (B, nh, T_total, hs) views

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._lengths[layer_idx]

    @property
    def batch_size(self) -> int:
        return self.key_cache[0].shape[0]

    def reset(self) -> None:
        """Forget the cached tokens; the buffers stay allocated (stale values are never read)."""
        self._lengths = [0] * len(self._lengths)

    def crop(self, max_length: int) -> None:
        """Rewind the write position to max_length (negative: by that many), gpt-fast's rollback: nothing is copied or
        freed and the buffers keep their addresses. The rejected slots lie beyond every later query's horizon
        (update returns only the filled prefix), and the next update overwrites them."""
        self._lengths = [resolve_crop(max_length, self.get_seq_length(), type(self).__name__)] * len(self._lengths)

    @property
    def nbytes(self) -> int:
        """Bytes of the K and V actually cached (filled slots), all layers."""
        return sum(
            t[:, :, :n].numel() * t.element_size()
            for ts in (self.key_cache, self.value_cache)
            for t, n in zip(ts, self._lengths)
        )

    @property
    def nbytes_allocated(self) -> int:
        """Bytes reserved by the buffers, filled or not."""
        return sum(t.numel() * t.element_size() for t in self.key_cache + self.value_cache)

    def __len__(self) -> int:
        return len(self.key_cache)

    def __repr__(self) -> str:
        return (
            f"StaticKVCache(layers={len(self)}, seq_length={self.get_seq_length()}, max_seq_len={self.max_seq_len}, "
            f"nbytes={self.nbytes}, nbytes_allocated={self.nbytes_allocated})"
        )


KVCache = DynamicKVCache | StaticKVCache
