"""Conversions between kvlib's KV caches and transformers' `DynamicCache` / `StaticCache` (transformers 5.x).

Both libraries store, per layer, keys and values as (B, nh, T, hs) tensors, so a conversion copies tensors and
nothing else: a cache filled by one library lets the other continue the same generation. In transformers 5 a
cache is a `Cache` object whose `layers[i].keys` / `.values` hold those tensors; the older tuple-of-tuples
`past_key_values` (and `DynamicCache.from_legacy_cache`) are gone.

transformers' StaticCache preallocates (B, nh, max_cache_len, hs) and its `get_seq_length()` returns a 0-d
tensor; only the first get_seq_length() slots are filled. Every function here copies, so the two caches never
share memory and continuing in one library leaves the other's cache untouched.

Shapes: B batch, nh heads, T cached tokens, hs head size, L layers.
"""
from __future__ import annotations

import torch

from ..cache.contiguous import DynamicKVCache, KVCache, StaticKVCache
from ..config import GPT2Config

CACHE_KINDS = ("dynamic", "static")


def _kvlib_layers(cache: KVCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The filled (B, nh, T, hs) keys and values of every layer of a kvlib cache, checked to agree on T."""
    if not isinstance(cache, (DynamicKVCache, StaticKVCache)):
        raise TypeError(f"expected a kvlib DynamicKVCache or StaticKVCache, got {type(cache).__name__}")
    lengths = [cache.get_seq_length(i) for i in range(len(cache))]
    if len(set(lengths)) > 1:
        raise ValueError(
            f"the layers of this cache hold different numbers of tokens {lengths}: convert it between forwards"
        )
    # A StaticKVCache buffer is (B, nh, max_seq_len, hs): take the filled prefix only.
    pairs = zip(cache.key_cache, cache.value_cache, lengths)
    return [(k[:, :, :n], v[:, :, :n]) for k, v, n in pairs]  # (B, nh, T, hs)


def to_dynamic_cache(cache: KVCache):
    """A `transformers.DynamicCache` holding a copy of a kvlib cache's keys and values (filled slots only)."""
    from transformers import DynamicCache

    layers = _kvlib_layers(cache)
    if not layers or layers[0][0].shape[-2] == 0:
        return DynamicCache()  # nothing cached yet: an empty cache that fills lazily, as transformers makes it
    return DynamicCache([(k.clone(), v.clone()) for k, v in layers])


def to_static_cache(cache: KVCache, hf_config, max_cache_len: int):
    """A `transformers.StaticCache` of max_cache_len slots per layer, its first T filled from a kvlib cache."""
    from transformers import PreTrainedConfig, StaticCache

    if not isinstance(hf_config, PreTrainedConfig):
        raise TypeError(
            f"hf_config must be a transformers config (e.g. model.to_hf().config), got {type(hf_config).__name__}"
        )
    layers = _kvlib_layers(cache)
    if layers and len(layers) != hf_config.num_hidden_layers:
        raise ValueError(f"the cache has {len(layers)} layers, the transformers config {hf_config.num_hidden_layers}")
    T = layers[0][0].shape[-2] if layers else 0
    if isinstance(max_cache_len, bool) or not isinstance(max_cache_len, int) or max_cache_len < max(T, 1):
        raise ValueError(f"max_cache_len must be an int >= the {T} cached tokens (and >= 1), got {max_cache_len!r}")
    static = StaticCache(config=hf_config, max_cache_len=max_cache_len)
    for layer_idx, (k, v) in enumerate(layers):
        if T:
            static.update(k, v, layer_idx)  # allocates (B, nh, max_cache_len, hs) zeros, writes slots 0..T-1
    return static


def _hf_layers(hf_cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The filled (B, nh, T, hs) keys and values of every layer of a transformers Dynamic/StaticCache."""
    from transformers.cache_utils import Cache, DynamicLayer, StaticLayer

    if isinstance(hf_cache, (tuple, list)):
        raise TypeError(
            "got a tuple/list: that is the legacy tuple-of-tuples past_key_values, which transformers 5 removed; "
            "wrap it first with transformers.DynamicCache(((k0, v0), (k1, v1), ...))"
        )
    if not isinstance(hf_cache, Cache):
        raise TypeError(f"expected a transformers DynamicCache or StaticCache, got {type(hf_cache).__name__}")
    out = []
    for i, layer in enumerate(hf_cache.layers):
        if type(layer) not in (DynamicLayer, StaticLayer):  # sliding-window, quantized, ...: not GPT-2's layout
            raise ValueError(
                f"layer {i} is a {type(layer).__name__}; only full-attention DynamicLayer/StaticLayer convert"
            )
        if not layer.is_initialized:
            raise ValueError(f"layer {i} of the transformers cache is empty: run a forward with it first")
        n = int(layer.get_seq_length())  # a 0-d tensor for StaticLayer
        out.append((layer.keys[:, :, :n], layer.values[:, :, :n]))  # (B, nh, T, hs): the filled prefix
    if not out:
        raise ValueError("the transformers cache has no layers yet: run a forward with it first")
    lengths = {k.shape[-2] for k, _ in out}
    if len(lengths) > 1:
        raise ValueError(f"the layers of the transformers cache hold different numbers of tokens {sorted(lengths)}")
    return out


def from_dynamic_cache(
    hf_cache, kind: str = "dynamic", config: GPT2Config | None = None, max_seq_len: int | None = None
) -> KVCache:
    """A kvlib cache of `kind` ("dynamic" or "static") holding a copy of a transformers cache's keys and values.

    hf_cache: a `DynamicCache` (or a `StaticCache`: its filled prefix is taken).
    config: the kvlib GPT2Config; required for kind="static", and when given the layer count and K/V shapes are
        checked against it. max_seq_len: slots of the static cache (default config.n_positions).
    """
    if kind not in CACHE_KINDS:
        raise ValueError(f"kind must be one of {CACHE_KINDS}, got {kind!r}")
    if config is not None and not isinstance(config, GPT2Config):
        raise TypeError(f"config must be a kvlib.GPT2Config (e.g. model.config), got {type(config).__name__}")
    layers = _hf_layers(hf_cache)
    B, nh, T, hs = layers[0][0].shape
    if config is not None and (len(layers), nh, hs) != (config.n_layer, config.n_kv_head, config.head_dim):
        raise ValueError(
            f"the transformers cache has (layers, heads, head_dim) = {(len(layers), nh, hs)}, the config expects "
            f"{(config.n_layer, config.n_kv_head, config.head_dim)}"
        )
    if kind == "dynamic":
        cache: KVCache = DynamicKVCache()
    else:
        if config is None:
            raise TypeError("kind='static' needs config=model.config to size the preallocated buffers")
        max_seq_len = config.n_positions if max_seq_len is None else max_seq_len
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < T:
            raise ValueError(f"max_seq_len must be an int >= the {T} cached tokens, got {max_seq_len!r}")
        k0 = layers[0][0]
        cache = StaticKVCache(config, B, max_seq_len, dtype=k0.dtype, device=k0.device)
    for layer_idx, (k, v) in enumerate(layers):
        # update() appends to a DynamicKVCache and writes slots 0..T-1 of a StaticKVCache; clone so a dynamic
        # cache never aliases the transformers tensors.
        cache.update(k.clone(), v.clone(), layer_idx)
    return cache
