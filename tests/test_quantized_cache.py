"""QuantizedKVCache and kvlib.cache.quantization: error bounds, bytes to the byte, cached decoding, bad input."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import kvlib
from kvlib.cache import quantization as qz
from kvlib.cache.quantized import QuantizedKVCache

SHAPE = dict(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=97)  # hs = 16


def model_with(n_kv_head=4, seed=7):
    return kvlib.random_gpt2(kvlib.GPT2Config(**SHAPE, n_kv_head=n_kv_head), seed=seed)


def ids(B, T, seed=0):
    return torch.randint(0, SHAPE["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=30, deadline=None)
@given(nbits=st.sampled_from([4, 8]), axis=st.sampled_from(["token", "channel"]), group=st.sampled_from([2, 4, 8]),
       blocks=st.integers(1, 4), seed=st.integers(0, 99))
def test_round_trip_error_is_at_most_half_a_step(nbits, axis, group, blocks, seed):
    x = randn(2, 3, group * blocks, 8, seed=seed) * 3  # (B, nkv, T, hs)
    codes, scale, zero = qz.quantize(x, nbits, axis, group)
    assert codes.dtype == torch.uint8 and codes.shape == (2, 3, group * blocks, 8 * nbits // 8)
    n_groups = x.numel() // group
    assert scale.numel() == zero.numel() == n_groups
    back = qz.dequantize(codes, scale, zero, nbits, axis, group)
    step = qz._grouped(torch.ones_like(x), axis, group) * scale.unsqueeze(-1 if axis == "token" else -2)
    assert bool(((back - x).abs() <= step.reshape(x.shape) / 2 + 1e-6).all())
    assert float((back - x).abs().max()) > 0  # it really is lossy


def test_int4_packs_two_codes_per_byte():
    x = torch.arange(16.0).reshape(1, 1, 1, 16)  # one group: codes 0..15 exactly
    codes, scale, zero = qz.quantize(x, 4, "token", 16)
    assert codes.shape == (1, 1, 1, 8) and codes[0, 0, 0, 0].item() == 0 | (1 << 4)
    assert torch.equal(qz.dequantize(codes, scale, zero, 4, "token", 16), x)
    const = torch.full((1, 1, 4, 16), 2.5)  # a constant group has zero range: reproduced exactly
    assert torch.equal(qz.dequantize(*qz.quantize(const, 8, "channel", 4), 8, "channel", 4), const)


def test_per_channel_keys_beat_per_token_keys_when_channels_have_outliers():
    keys = randn(1, 4, 64, 16, seed=1)
    keys[..., [3, 11]] *= 10  # a few channels with large magnitude: what KIVI observes in real keys
    ordinary = torch.ones(16, dtype=torch.bool)
    ordinary[[3, 11]] = False

    def rel_err(nbits, axis, channels=slice(None)):
        diff = qz.dequantize(*qz.quantize(keys, nbits, axis, 16), nbits, axis, 16) - keys
        return float(diff[..., channels].norm() / keys[..., channels].norm())

    # Per token, the outliers set every token's step, so the ordinary channels lose most of their precision.
    assert rel_err(4, "channel", ordinary) < 0.3 * rel_err(4, "token", ordinary)
    assert rel_err(4, "channel") < rel_err(4, "token") and rel_err(8, "channel") < rel_err(8, "token")
    assert rel_err(8, "channel") < rel_err(4, "channel") / 8  # 4 more bits: ~16x finer steps


@settings(max_examples=30, deadline=None)
@given(nbits=st.sampled_from([4, 8]), key_quant=st.sampled_from(["token", "channel"]),
       value_quant=st.sampled_from(["token", "channel"]), group=st.sampled_from([2, 4, 16]),
       residual=st.integers(0, 12), chunks=st.lists(st.integers(1, 9), min_size=1, max_size=6),
       n_kv_head=st.sampled_from([1, 4]), B=st.integers(1, 2))
def test_nbytes_matches_the_formula_to_the_byte_and_codes_match_a_one_shot_quantization(
        nbits, key_quant, value_quant, group, residual, chunks, n_kv_head, B):
    config = kvlib.GPT2Config(**SHAPE, n_kv_head=n_kv_head)
    cache = QuantizedKVCache(config, nbits, key_quant=key_quant, value_quant=value_quant, group_size=group,
                             residual_length=residual)
    keys, values = randn(B, n_kv_head, sum(chunks), 16, seed=1), randn(B, n_kv_head, sum(chunks), 16, seed=2)
    start = 0
    for n in chunks:
        for layer in range(config.n_layer):
            k_out, v_out = cache.update(keys[:, :, start:start + n], values[:, :, start:start + n], layer)
        start += n
        assert k_out.shape == (B, n_kv_head, start, 16)
        assert cache.nbytes == qz.quantized_kv_cache_bytes(
            n_layer=2, n_kv_head=n_kv_head, head_dim=16, seq_len=start, batch_size=B, nbits=nbits, group_size=group,
            residual_length=residual, key_quant=key_quant, value_quant=value_quant, dtype=torch.float32)
        assert torch.equal(k_out[:, :, -n:], keys[:, :, start - n:start])  # the new tokens: full precision
    n_q = cache.quantized_length()
    assert n_q == qz.quantized_tokens(start, residual, cache.unit) and start - n_q >= min(residual, start)
    k_held, v_held = cache.dequantized(1)
    for held, raw, axis in ((k_held, keys, key_quant), (v_held, values, value_quant)):
        once = qz.dequantize(*qz.quantize(raw[:, :, :n_q], nbits, axis, group), nbits, axis, group)
        assert torch.equal(held[:, :, :n_q], once)  # quantizing as tokens leave = quantizing all at once
        assert torch.equal(held[:, :, n_q:], raw[:, :, n_q:])  # the residual window is exact


def test_a_window_longer_than_the_sequence_changes_nothing():
    model = model_with()
    x = ids(2, 30)
    cache = QuantizedKVCache(model.config, 4, residual_length=30)
    with torch.no_grad():
        out = torch.cat([model(x[:, :10], cache)] + [model(x[:, t:t + 1], cache) for t in range(10, 30)], dim=1)
    torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
    assert cache.quantized_length() == 0


def decode_logits(model, x, cache, prompt=8):
    """Prefill x[:, :prompt], then teacher-force one token at a time; logits (B, T, V)."""
    with torch.no_grad():
        return torch.cat([model(x[:, :prompt], cache)] + [model(x[:, t:t + 1], cache)
                                                          for t in range(prompt, x.shape[1])], dim=1)


@pytest.mark.parametrize("n_kv_head", [1, 4])
def test_cached_decoding_error_shrinks_with_more_bits(n_kv_head):
    model = model_with(n_kv_head)
    x = ids(1, 80, seed=3)
    exact = decode_logits(model, x, kvlib.DynamicKVCache())
    err = {}
    for nbits in (4, 8):
        cache = QuantizedKVCache(model.config, nbits, group_size=16, residual_length=8)
        err[nbits] = float((decode_logits(model, x, cache) - exact).abs().max() / exact.abs().max())
        assert cache.quantized_length() == 64  # (80 - 8) // 16 * 16 tokens held as codes
    assert 0 < err[8] < err[4] / 4 and err[8] < 1e-3 and err[4] < 5e-2
    greedy = kvlib.generate(model, x[:, :8], 60)  # greedy tokens of the exact cache
    q8 = QuantizedKVCache(model.config, 8, group_size=16, residual_length=8)
    assert torch.equal(decode_logits(model, greedy, q8)[:, 7:-1].argmax(-1), greedy[:, 8:])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(nbits=2), ValueError, r"nbits must be 4 or 8"),
    (dict(nbits=16), ValueError, r"nbits must be 4 or 8"),
    (dict(nbits="8"), TypeError, r"nbits must be an int"),
    (dict(key_quant="head"), ValueError, r"key_quant must be 'token' .* or 'channel'"),
    (dict(value_quant="tensor"), ValueError, r"value_quant must be 'token'"),
    (dict(group_size=3), ValueError, r"group_size \(3\) must divide head_dim \(16\).*\[1, 2, 4, 8, 16\]"),
    (dict(group_size=32), ValueError, r"group_size \(32\) must divide head_dim \(16\)"),
    (dict(group_size=0), ValueError, r"group_size \(0\) must divide"),
    (dict(residual_length=-1), ValueError, r"residual_length must be >= 0"),
    (dict(residual_length=1.5), TypeError, r"residual_length must be an int"),
])
def test_bad_settings_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        QuantizedKVCache(model_with().config, **kwargs)


def test_a_quantized_cache_given_to_a_model_of_another_shape_is_refused():
    cache = QuantizedKVCache(model_with(4).config, 8)
    with pytest.raises(ValueError, match=r"built for \(n_layer, n_kv_head, head_dim\) = \(2, 4, 16\).*\(2, 1, 16\)"):
        model_with(1)(ids(1, 3), cache)
    with pytest.raises(ValueError, match=r"built for \(n_kv_head, head_dim\) = \(4, 16\)"):
        cache.update(randn(1, 2, 3, 16), randn(1, 2, 3, 16), 0)
    with pytest.raises(TypeError, match="config must be a kvlib.GPT2Config"):
        QuantizedKVCache(model_with(4), 8)
    with pytest.raises(ValueError, match="int4 packs two channels per byte"):
        QuantizedKVCache(kvlib.GPT2Config(n_layer=1, n_head=2, n_embd=6, vocab_size=10), 4, group_size=1)
