"""kvlib's caches against transformers' DynamicCache / StaticCache: same K/V layer by layer, lossless conversions
both ways, and a generation started in one library continues identically in the other."""
import pytest
import torch
from transformers import DynamicCache, StaticCache

import kvlib
from kvlib.model.batching import left_pad
from kvlib.model.hf import from_dynamic_cache, to_dynamic_cache, to_static_cache
from tests.conftest import TINY

KV_ATOL = 1e-5  # fp32; K/V of the tiny model agree to ~1e-7 (same matmuls, same order)
KINDS = ("dynamic", "static")
PROMPT = torch.tensor([[5, 9, 13, 2, 7, 50, 51], [8, 8, 1, 90, 33, 4, 60]])  # (2, 7)
N_NEW = 12


@pytest.fixture(scope="module")
def pair():
    """kvlib model and a transformers copy of the same weights. The 2-D weights are scaled up ×15: with GPT-2's
    own init (std 0.02) a tiny random model repeats one token forever, which would hide a wrong continuation."""
    model = kvlib.random_gpt2(kvlib.GPT2Config(**TINY), seed=1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(15)
    return model, model.to_hf()


def hf_greedy(hf, input_ids, max_new_tokens, **kwargs):
    return hf.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
                       **kwargs)


@pytest.fixture(scope="module")
def reference(pair):
    model, _ = pair
    out = kvlib.generate(model, PROMPT, N_NEW)
    assert len(set(out[:, PROMPT.shape[1]:].flatten().tolist())) > 4  # varied tokens: the comparisons have teeth
    return out


def kvlib_prefill(model, kind, input_ids=PROMPT, attention_mask=None, max_seq_len=64):
    cache = kvlib.make_cache(model, kind, input_ids.shape[0], max_seq_len)
    with torch.inference_mode():
        logits = kvlib.prefill(model, input_ids, cache, attention_mask)
    return cache, logits


@pytest.mark.parametrize("kind", KINDS)
def test_kvlib_cache_holds_the_same_kv_as_dynamic_cache(pair, kind):
    model, hf = pair
    cache, _ = kvlib_prefill(model, kind)
    dc = DynamicCache(config=hf.config)
    with torch.no_grad():
        hf(PROMPT, past_key_values=dc, use_cache=True)
        hf(PROMPT[:, :1], past_key_values=dc, use_cache=True)  # one decode step more in both
    with torch.inference_mode():
        kvlib.decode_one_token(model, PROMPT[:, 0], cache)
    T = PROMPT.shape[1] + 1
    assert dc.get_seq_length() == cache.get_seq_length() == T
    assert len(dc.layers) == len(cache) == model.config.n_layer
    for i, layer in enumerate(dc.layers):
        shape = (2, model.config.n_head, T, model.config.head_dim)
        assert tuple(layer.keys.shape) == tuple(layer.values.shape) == shape
        torch.testing.assert_close(cache.key_cache[i][:, :, :T], layer.keys, atol=KV_ATOL, rtol=0)
        torch.testing.assert_close(cache.value_cache[i][:, :, :T], layer.values, atol=KV_ATOL, rtol=0)


def test_hf_static_cache_preallocates_and_fills_a_prefix(pair):
    model, hf = pair
    cache, _ = kvlib_prefill(model, "dynamic")
    sc = StaticCache(config=hf.config, max_cache_len=16)
    with torch.no_grad():
        hf(PROMPT, past_key_values=sc, use_cache=True)
    T = PROMPT.shape[1]
    assert int(sc.get_seq_length()) == T
    for i, layer in enumerate(sc.layers):
        assert layer.keys.shape[-2] == 16  # max_cache_len slots, allocated up front
        torch.testing.assert_close(layer.keys[:, :, :T], cache.key_cache[i], atol=KV_ATOL, rtol=0)
        torch.testing.assert_close(layer.values[:, :, :T], cache.value_cache[i], atol=KV_ATOL, rtol=0)
        assert not layer.keys[:, :, T:].any() and not layer.values[:, :, T:].any()  # unfilled slots stay zero


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_hf_generate_cache_after_generation(pair, reference, cache_implementation):
    model, hf = pair
    out = hf_greedy(hf, PROMPT, N_NEW, cache_implementation=cache_implementation, return_dict_in_generate=True)
    assert torch.equal(out.sequences, reference)
    pkv = out.past_key_values
    assert type(pkv) is {"dynamic": DynamicCache, "static": StaticCache}[cache_implementation]
    # The last generated token was never fed back, so the cache holds one token fewer than the sequence.
    assert int(pkv.get_seq_length()) == reference.shape[1] - 1


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_kvlib_to_hf_to_kvlib_is_exact(pair, kind):
    model, _ = pair
    cache, _ = kvlib_prefill(model, kind)
    dc = to_dynamic_cache(cache)
    assert isinstance(dc, DynamicCache) and dc.get_seq_length() == cache.get_seq_length()
    for back_kind in KINDS:
        back = from_dynamic_cache(dc, kind=back_kind, config=model.config, max_seq_len=32)
        assert back.get_seq_length() == cache.get_seq_length()
        T = cache.get_seq_length()
        for i in range(model.config.n_layer):
            assert torch.equal(back.key_cache[i][:, :, :T], cache.key_cache[i][:, :, :T])
            assert torch.equal(back.value_cache[i][:, :, :T], cache.value_cache[i][:, :, :T])
    static = to_static_cache(cache, pair[1].config, max_cache_len=20)
    assert int(static.get_seq_length()) == cache.get_seq_length() and static.layers[0].keys.shape[-2] == 20
    again = from_dynamic_cache(static, kind="dynamic")
    assert all(torch.equal(a, b) for a, b in zip(again.key_cache, [k[:, :, :7] for k in cache.key_cache]))


def test_round_trip_hf_to_kvlib_to_hf_is_exact(pair):
    _, hf = pair
    dc = DynamicCache(config=hf.config)
    with torch.no_grad():
        hf(PROMPT, past_key_values=dc, use_cache=True)
    for kind in KINDS:
        back = to_dynamic_cache(from_dynamic_cache(dc, kind=kind, config=pair[0].config))
        for a, b in zip(back.layers, dc.layers):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_conversions_copy(pair):
    model, _ = pair
    cache, _ = kvlib_prefill(model, "static")
    before = cache.key_cache[0][:, :, :7].clone()
    dc = to_dynamic_cache(cache)
    dc.layers[0].keys.zero_()
    back = from_dynamic_cache(to_dynamic_cache(cache))
    back.key_cache[0].zero_()
    assert torch.equal(cache.key_cache[0][:, :, :7], before)


@pytest.mark.parametrize("kvlib_kind", KINDS)
@pytest.mark.parametrize("hf_kind", ["dynamic", "static"])
def test_prefill_in_kvlib_continue_in_transformers(pair, reference, kvlib_kind, hf_kind):
    model, hf = pair
    cache, logits = kvlib_prefill(model, kvlib_kind)
    first = logits.argmax(-1)  # (B,): kvlib picks the first new token
    seq = torch.cat([PROMPT, first[:, None]], dim=1)
    hf_cache = to_dynamic_cache(cache) if hf_kind == "dynamic" else to_static_cache(cache, hf.config, 64)
    out = hf_greedy(hf, seq, N_NEW - 1, past_key_values=hf_cache)
    assert torch.equal(out, reference)


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
@pytest.mark.parametrize("kvlib_kind", KINDS)
def test_prefill_in_transformers_continue_in_kvlib(pair, reference, cache_implementation, kvlib_kind):
    model, hf = pair
    out = hf_greedy(hf, PROMPT, 3, cache_implementation=cache_implementation, return_dict_in_generate=True)
    cache = from_dynamic_cache(out.past_key_values, kind=kvlib_kind, config=model.config, max_seq_len=64)
    seq = out.sequences
    with torch.inference_mode():
        for _ in range(N_NEW - 3):
            token = kvlib.decode_one_token(model, seq[:, -1], cache).argmax(-1)  # (B,)
            seq = torch.cat([seq, token[:, None]], dim=1)
    assert torch.equal(seq, reference)


def test_padded_batch_prefill_in_kvlib_continue_in_transformers(pair):
    model, hf = pair
    ids, mask = left_pad([[5, 9, 13, 2, 7], [40], [11, 3, 60]], pad_token_id=0)
    expected = kvlib.generate(model, ids, 8, attention_mask=mask)
    cache, logits = kvlib_prefill(model, "dynamic", ids, mask)
    seq = torch.cat([ids, logits.argmax(-1)[:, None]], dim=1)
    seq_mask = torch.cat([mask, mask.new_ones(3, 1)], dim=1)
    out = hf_greedy(hf, seq, 7, past_key_values=to_dynamic_cache(cache), attention_mask=seq_mask)
    assert torch.equal(out, expected)


def test_legacy_tuple_api_is_gone_and_its_replacement(pair):
    _, hf = pair
    assert not hasattr(DynamicCache, "from_legacy_cache") and not hasattr(DynamicCache, "to_legacy_cache")
    dc = DynamicCache(config=hf.config)
    with torch.no_grad():
        hf(PROMPT, past_key_values=dc, use_cache=True)
    legacy = tuple((layer.keys, layer.values) for layer in dc.layers)  # what transformers 4 passed around
    with pytest.raises(AttributeError):
        with torch.no_grad():
            hf(PROMPT[:, :1], past_key_values=legacy)
    wrapped = DynamicCache(legacy)  # the transformers 5 spelling of from_legacy_cache
    assert wrapped.get_seq_length() == PROMPT.shape[1]
    with pytest.raises(TypeError, match="legacy tuple-of-tuples"):
        from_dynamic_cache(legacy)


def test_conversion_errors(pair):
    model, hf = pair
    cache, _ = kvlib_prefill(model, "dynamic")
    dc = to_dynamic_cache(cache)
    with pytest.raises(TypeError, match="DynamicKVCache or StaticKVCache"):
        to_dynamic_cache(dc)
    with pytest.raises(TypeError, match="DynamicCache or StaticCache"):
        from_dynamic_cache(cache)
    with pytest.raises(ValueError, match="kind must be one of"):
        from_dynamic_cache(dc, kind="paged")
    with pytest.raises(TypeError, match="needs config"):
        from_dynamic_cache(dc, kind="static")
    with pytest.raises(TypeError, match="kvlib.GPT2Config"):
        from_dynamic_cache(dc, config=hf.config)
    with pytest.raises(ValueError, match="layers, heads, head_dim"):
        from_dynamic_cache(dc, config=kvlib.GPT2Config(**{**TINY, "n_layer": 3}))
    with pytest.raises(ValueError, match="max_seq_len must be"):
        from_dynamic_cache(dc, kind="static", config=model.config, max_seq_len=3)
    with pytest.raises(ValueError, match="empty|no layers"):
        from_dynamic_cache(DynamicCache())
    with pytest.raises(ValueError, match="max_cache_len must be"):
        to_static_cache(cache, hf.config, max_cache_len=3)
    with pytest.raises(TypeError, match="transformers config"):
        to_static_cache(cache, model.config, max_cache_len=16)
    assert to_dynamic_cache(kvlib.DynamicKVCache()).get_seq_length() == 0  # empty converts to empty
