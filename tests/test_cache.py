import pytest
import torch

import kvlib


def states(B=2, nh=4, T=3, hs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, nh, T, hs, generator=g), torch.randn(B, nh, T, hs, generator=g)


def make(kind, config, B=2, max_seq_len=16):
    return kvlib.DynamicKVCache() if kind == "dynamic" else kvlib.StaticKVCache(config, B, max_seq_len)


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_update_returns_all_tokens_so_far(kind, tiny_config):
    cache = make(kind, tiny_config)
    k1, v1 = states(T=3, hs=tiny_config.head_dim, seed=1)
    k2, v2 = states(T=1, hs=tiny_config.head_dim, seed=2)
    assert cache.get_seq_length() == 0
    for layer in range(tiny_config.n_layer):
        cache.update(k1, v1, layer)
    for layer in range(tiny_config.n_layer):
        keys, values = cache.update(k2, v2, layer)
        assert keys.shape == (2, 4, 4, tiny_config.head_dim)
        assert torch.equal(keys, torch.cat([k1, k2], dim=2)) and torch.equal(values, torch.cat([v1, v2], dim=2))
    assert cache.get_seq_length() == 4
    per_token = 2 * tiny_config.n_layer * 2 * 4 * tiny_config.head_dim * 4  # K and V, layers, B, nh, hs, fp32 bytes
    assert cache.nbytes == 4 * per_token
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.nbytes == 0


def test_static_cache_writes_in_place_and_never_exposes_empty_slots(tiny_config):
    cache = kvlib.StaticKVCache(tiny_config, 2, 16)
    buffer_ptr = cache.key_cache[0].data_ptr()
    k, v = states(T=5, hs=tiny_config.head_dim)
    keys, _ = cache.update(k, v, 0)
    assert keys.shape[2] == 5  # only filled slots, not max_seq_len
    assert keys.data_ptr() == buffer_ptr  # a view of the preallocated buffer
    assert cache.nbytes_allocated == 2 * tiny_config.n_layer * 2 * 4 * 16 * tiny_config.head_dim * 4
    assert cache.nbytes < cache.nbytes_allocated


def test_dynamic_cache_reallocates_each_step(tiny_config):
    cache = kvlib.DynamicKVCache()
    k, v = states(T=1, hs=tiny_config.head_dim)
    first, _ = cache.update(k, v, 0)
    second, _ = cache.update(k, v, 0)
    assert first.data_ptr() != second.data_ptr()  # concatenation copies the past into a new tensor


def test_static_cache_overflow_names_the_limit(tiny_config):
    cache = kvlib.StaticKVCache(tiny_config, 2, 4)
    k, v = states(T=3, hs=tiny_config.head_dim)
    cache.update(k, v, 0)
    with pytest.raises(ValueError, match="max_seq_len=4"):
        cache.update(k, v, 0)


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_cache_for_another_batch_size_is_rejected(kind, tiny_config):
    cache = make(kind, tiny_config, B=2)
    cache.update(*states(B=2, hs=tiny_config.head_dim), 0)
    with pytest.raises(ValueError, match="batch"):
        cache.update(*states(B=3, hs=tiny_config.head_dim), 0)


def test_static_cache_rejects_bad_construction_and_dtype(tiny_config):
    with pytest.raises(ValueError, match="max_seq_len must be positive"):
        kvlib.StaticKVCache(tiny_config, 1, 0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        kvlib.StaticKVCache(tiny_config, 1.5, 8)
    with pytest.raises(TypeError, match="kvlib.GPT2Config"):
        kvlib.StaticKVCache({"n_layer": 2}, 1, 8)
    cache = kvlib.StaticKVCache(tiny_config, 2, 8)
    k, v = states(hs=tiny_config.head_dim)
    with pytest.raises(TypeError, match="float32"):
        cache.update(k.half(), v.half(), 0)


def test_bad_states_are_rejected():
    cache = kvlib.DynamicKVCache()
    with pytest.raises(ValueError, match="num_heads"):
        cache.update(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), 0)
    with pytest.raises(ValueError, match="layer_idx"):
        cache.update(*states(), 5)
