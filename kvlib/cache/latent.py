"""A latent cache for multi-head latent attention (MLA, DeepSeek-V2): one small vector per token per layer.

Instead of the keys and values of every head (2 · n_kv_head · hs numbers per token per layer), a latent-attention
layer caches c = x · W_DKV, kv_lora_rank numbers per token, and rebuilds K and V from it (or never builds them at
all: kvlib.model.mla's absorbed decode attends over c directly). The cache grows by concatenation, like
DynamicKVCache; it holds no heads, so its states are (B, T, r), not (B, nh, T, hs).

Shapes: B batch, T_new tokens fed this call, T_total = tokens cached after it, r = kv_lora_rank.
"""
from __future__ import annotations

import torch


def latent_cache_bytes(*, n_layer: int, kv_lora_rank: int, seq_len: int, batch_size: int = 1,
                       dtype: torch.dtype = torch.float32) -> int:
    """Bytes of a latent cache: B · L · T · r · bytes per element (one latent per token per layer, no K/V pair)."""
    for name, value in (("n_layer", n_layer), ("kv_lora_rank", kv_lora_rank), ("seq_len", seq_len),
                        ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return batch_size * n_layer * seq_len * kv_lora_rank * dtype.itemsize


class LatentKVCache:
    """Per layer, the (B, T_total, r) latents of one request, grown by torch.cat along the tokens (dim 1)."""

    def __init__(self) -> None:
        self.latent_cache: list[torch.Tensor] = []  # per layer: (B, T_total, r)

    def update_latent(self, latent_states: torch.Tensor, layer_idx: int) -> torch.Tensor:
        """Append (B, T_new, r) latents to layer `layer_idx`; return all (B, T_total, r) latents of that layer."""
        if not isinstance(latent_states, torch.Tensor) or latent_states.dim() != 3:
            raise ValueError("latent_states must be a (batch, seq_len, kv_lora_rank) tensor, got "
                             f"{type(latent_states).__name__} {tuple(getattr(latent_states, 'shape', ()))}")
        if layer_idx == len(self.latent_cache):  # first call for this layer
            self.latent_cache.append(latent_states.clone(memory_format=torch.contiguous_format))
            return self.latent_cache[layer_idx]
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, int) or not 0 <= layer_idx < len(self.latent_cache):
            raise ValueError(f"layer_idx must be in 0..{len(self.latent_cache)} (layers are filled in order), "
                             f"got {layer_idx!r}")
        old = self.latent_cache[layer_idx]
        if (old.shape[0], old.shape[2], old.dtype) != (latent_states.shape[0], latent_states.shape[2],
                                                        latent_states.dtype):
            raise ValueError(f"this cache holds (batch, kv_lora_rank) = {(old.shape[0], old.shape[2])} of {old.dtype}, "
                             f"got {(latent_states.shape[0], latent_states.shape[2])} of {latent_states.dtype}: "
                             "use one cache per request and per model")
        self.latent_cache[layer_idx] = torch.cat([old, latent_states], dim=1)  # (B, T_total, r): a new copy
        return self.latent_cache[layer_idx]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int):
        """Refused: this cache holds latents, not keys and values (a model with GPT-2's attention called it)."""
        raise TypeError("a LatentKVCache holds the latents of a latent-attention model (kvlib.model.mla), not keys "
                        "and values: use kvlib.DynamicKVCache (or generate's cache='dynamic') with this model")

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens cached so far (0 before the first update)."""
        return self.latent_cache[layer_idx].shape[1] if layer_idx < len(self.latent_cache) else 0

    @property
    def batch_size(self) -> int | None:
        return self.latent_cache[0].shape[0] if self.latent_cache else None

    def reset(self) -> None:
        self.latent_cache.clear()

    @property
    def nbytes(self) -> int:
        """Bytes of the latents held, all layers."""
        return sum(t.numel() * t.element_size() for t in self.latent_cache)

    @property
    def nbytes_allocated(self) -> int:
        """Equal to nbytes: every held tensor is exactly sized (nothing reserved ahead)."""
        return self.nbytes

    def __len__(self) -> int:
        return len(self.latent_cache)

    def __repr__(self) -> str:
        rank = self.latent_cache[0].shape[-1] if self.latent_cache else None
        return (f"LatentKVCache(layers={len(self)}, kv_lora_rank={rank}, seq_length={self.get_seq_length()}, "
                f"nbytes={self.nbytes})")
