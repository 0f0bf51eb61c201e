"""Grouped-query / multi-query attention: config, cached == uncached, mean-pooling and its duplicated-head oracle."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import kvlib
from kvlib.measure import memory
from kvlib.model import gqa

SHAPE = dict(n_layer=2, n_head=8, n_embd=64, n_positions=64, vocab_size=101)  # hs = 8; n_kv_head in 1, 2, 4, 8


def model_with(n_kv_head, attn="eager", seed=3):
    return kvlib.random_gpt2(kvlib.GPT2Config(**SHAPE, n_kv_head=n_kv_head, attn_implementation=attn), seed=seed)


def ids(B, T, seed=0):
    return torch.randint(0, SHAPE["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


def test_n_kv_head_defaults_to_n_head_and_mha_is_unchanged():
    config = kvlib.GPT2Config(**SHAPE)
    assert config.n_kv_head == 8 and config.n_kv_groups == 1
    mha = kvlib.GPT2(config).state_dict()
    hf = kvlib.GPT2(kvlib.GPT2Config(**SHAPE, n_kv_head=8)).state_dict()
    assert {k: v.shape for k, v in mha.items()} == {k: v.shape for k, v in hf.items()}
    assert mha["transformer.h.0.attn.c_attn.weight"].shape == (64, 3 * 64)  # GPT-2's fused (C, 3C)
    assert config.to_hf().n_head == 8  # MHA still converts


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_gqa_projection_shape_and_parameter_count(n_kv_head):
    model = model_with(n_kv_head)
    hs = 8
    assert model.transformer.h[0].attn.c_attn.weight.shape == (64, 64 + 2 * n_kv_head * hs)  # (C, C + 2·kv·hs)
    assert sum(p.numel() for p in model.parameters()) == memory.gpt2_parameter_count(model.config)


@pytest.mark.parametrize("bad", [0, 3, 5, 16, -2])
def test_n_kv_head_must_divide_n_head(bad):
    with pytest.raises(ValueError, match=r"n_kv_head \(-?\d+\) must divide n_head \(8\).*\[1, 2, 4, 8\]"):
        kvlib.GPT2Config(**SHAPE, n_kv_head=bad)


def test_n_kv_head_type_is_checked():
    with pytest.raises(TypeError, match="n_kv_head must be an int or None"):
        kvlib.GPT2Config(**SHAPE, n_kv_head=2.0)


def test_to_hf_refuses_gqa_configs():
    with pytest.raises(ValueError, match="no grouped-query attention.*n_kv_head=2"):
        kvlib.GPT2Config(**SHAPE, n_kv_head=2).to_hf()
    with pytest.raises(ValueError, match="no grouped-query attention"):
        model_with(2).to_hf()


def test_repeat_kv_maps_query_head_to_kv_head_h_div_g():
    states = torch.randn(2, 3, 5, 4)  # (B, n_kv, T, hs)
    out = kvlib.model.gpt2.repeat_kv(states, 4)  # (B, 12, T, hs)
    assert out.shape == (2, 12, 5, 4)
    for h in range(12):
        assert torch.equal(out[:, h], states[:, h // 4])
    assert kvlib.model.gpt2.repeat_kv(states, 1) is states


@settings(max_examples=20, deadline=None)
@given(
    n_kv_head=st.sampled_from([1, 2, 4, 8]),
    kind=st.sampled_from(["dynamic", "static"]),
    attn=st.sampled_from(["eager", "sdpa"]),
    B=st.integers(1, 2),
    chunks=st.lists(st.integers(1, 6), min_size=1, max_size=5),
)
def test_cached_equals_uncached_for_every_n_kv_head(n_kv_head, kind, attn, B, chunks):
    model = model_with(n_kv_head, attn)
    x = ids(B, sum(chunks), seed=len(chunks))
    with torch.no_grad():
        full = model(x)  # (B, T, V) uncached
        cache = kvlib.make_cache(model, kind, B, sum(chunks))
        start, parts = 0, []
        for n in chunks:
            parts.append(model(x[:, start:start + n], cache))
            start += n
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.key_cache[0].shape[1] == n_kv_head  # the cache stores n_kv_head heads, not n_head


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_cache_bytes_shrink_by_the_group_factor(n_kv_head):
    model = model_with(n_kv_head)
    cache = kvlib.DynamicKVCache()
    with torch.no_grad():
        model(ids(2, 10), cache)
    assert cache.nbytes == memory.kv_cache_bytes_for_config(model.config, 10, batch_size=2, dtype=torch.float32)
    assert cache.nbytes * (8 // n_kv_head) == memory.kv_cache_bytes_for_config(model_with(8).config, 10, 2, "fp32")


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_duplicating_kv_heads_gives_an_mha_model_with_identical_outputs(n_kv_head, attn):
    mha = model_with(8, attn)
    pooled = gqa.mean_pool_kv_heads(mha, n_kv_head)
    expanded = gqa.expand_kv_heads(pooled)  # the oracle: kvlib's proven MHA path with each K/V head copied g times
    assert pooled.config.n_kv_head == n_kv_head and expanded.config.n_kv_head == 8
    x = ids(2, 20)
    with torch.no_grad():
        out_gqa, out_mha, out_orig = pooled(x), expanded(x), mha(x)
    torch.testing.assert_close(out_gqa, out_mha, atol=1e-5, rtol=1e-5)
    assert (out_gqa - out_orig).abs().max() > 1e-3  # pooling really changed the model (the check above can fail)
    assert torch.equal(kvlib.generate(pooled, x[:1, :5], 15), kvlib.generate(expanded, x[:1, :5], 15))


def test_mean_pooled_keys_are_the_mean_of_the_group():
    mha = model_with(8)
    pooled = gqa.mean_pool_kv_heads(mha, 2)  # g = 4: heads 0-3 -> kv head 0, heads 4-7 -> kv head 1
    x = torch.randn(1, 5, 64)
    with torch.no_grad():
        k_mha = mha.transformer.h[1].attn.c_attn(x)[..., 64:128].view(1, 5, 8, 8)  # (B, T, nh, hs)
        k_gqa = pooled.transformer.h[1].attn.c_attn(x)[..., 64:80].view(1, 5, 2, 8)  # (B, T, n_kv, hs)
    torch.testing.assert_close(k_gqa, k_mha.view(1, 5, 2, 4, 8).mean(dim=3), atol=1e-6, rtol=1e-6)


def test_mean_pool_to_n_head_is_the_identity_and_leaves_the_input_alone():
    mha = model_with(8)
    before = {k: v.clone() for k, v in mha.state_dict().items()}
    same = gqa.mean_pool_kv_heads(mha, 8)
    assert all(torch.equal(before[k], v) for k, v in same.state_dict().items())
    gqa.mean_pool_kv_heads(mha, 1)
    assert all(torch.equal(before[k], v) for k, v in mha.state_dict().items())


def test_mean_pool_rejects_bad_head_counts():
    with pytest.raises(ValueError, match=r"must divide the model's 8 K/V heads.*\[1, 2, 4, 8\]"):
        gqa.mean_pool_kv_heads(model_with(8), 3)
    with pytest.raises(ValueError, match=r"allowed: \[1, 2\]"):
        gqa.mean_pool_kv_heads(model_with(2), 4)  # can only pool further, never un-pool
    with pytest.raises(TypeError, match="must be a kvlib.GPT2"):
        gqa.mean_pool_kv_heads(object(), 2)
    assert gqa.allowed_n_kv_heads(12) == [1, 2, 3, 4, 6, 12]


def test_a_static_cache_for_another_head_count_is_refused():
    cache = kvlib.StaticKVCache(kvlib.GPT2Config(**SHAPE), 1, 16)  # built for 8 K/V heads
    with pytest.raises(ValueError, match="built for"):
        model_with(2)(ids(1, 4), cache)
