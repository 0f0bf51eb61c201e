"""SlidingWindowKVCache and sliding_window_mask: cached decoding equals an uncached forward under the banded mask."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import kvlib
from kvlib.measure import memory
from kvlib.cache.sliding_window import SlidingWindowKVCache

SHAPE = dict(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=97)  # hs = 8


def model_with(n_kv_head=4, attn="eager", seed=5):
    return kvlib.random_gpt2(kvlib.GPT2Config(**SHAPE, n_kv_head=n_kv_head, attn_implementation=attn), seed=seed)


def ids(B, T, seed=0):
    return torch.randint(0, SHAPE["vocab_size"], (B, T), generator=torch.Generator().manual_seed(seed))


@settings(max_examples=40, deadline=None)
@given(T_total=st.integers(1, 40), T_new=st.integers(1, 40), window=st.integers(1, 12), sinks=st.integers(0, 11))
def test_sliding_window_mask_is_the_band_plus_sink_columns(T_total, T_new, window, sinks):
    T_new, sinks = min(T_new, T_total), min(sinks, window - 1)
    mask = kvlib.sliding_window_mask(T_new, T_total, window, sinks)
    assert mask.shape == (T_new, T_total) and mask.dtype == torch.bool
    for i in range(T_new):
        p = T_total - T_new + i
        expected = [j <= p and (p - j < window or j < sinks) for j in range(T_total)]
        assert mask[i].tolist() == expected
    assert int(mask[-1].sum()) == min(T_total, window + sinks)  # the last query sees window + sinks keys at most
    if window >= T_total:
        assert torch.equal(mask, kvlib.causal_mask(T_new, T_total))


@settings(max_examples=25, deadline=None)
@given(
    window=st.integers(1, 10),
    sinks=st.integers(0, 9),
    n_kv_head=st.sampled_from([1, 2, 4]),
    attn=st.sampled_from(["eager", "sdpa"]),
    B=st.integers(1, 2),
    chunks=st.lists(st.integers(1, 12), min_size=1, max_size=6),
)
def test_cached_decoding_equals_uncached_forward_under_the_banded_mask(window, sinks, n_kv_head, attn, B, chunks):
    sinks = min(sinks, window - 1)
    model = model_with(n_kv_head, attn)
    T = sum(chunks)
    x = ids(B, T, seed=T)
    mask = kvlib.sliding_window_mask(T, T, window, sinks)[None, None]  # (1, 1, T, T)
    cache = SlidingWindowKVCache(model.config, window, sinks)
    with torch.no_grad():
        full = model(x, attention_mask=mask)  # the uncached oracle: every key recomputed, the band masks them
        start, parts = 0, []
        for n in chunks:
            parts.append(model(x[:, start:start + n], cache))
            start += n
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.get_seq_length() == T  # positions keep counting
    assert cache.held_tokens() == min(T, window + sinks)
    if T > window + sinks:  # the band really hid keys: full attention gives other logits
        assert (model(x)[:, -1] - full[:, -1]).abs().max() > 1e-4


def test_a_window_covering_the_sequence_is_full_attention():
    model = model_with()
    x = ids(2, 20)
    cache = SlidingWindowKVCache(model.config, window=20)
    with torch.no_grad():
        logits = model(x, cache)
    torch.testing.assert_close(logits, model(x), atol=1e-5, rtol=1e-5)


def test_rolling_buffer_puts_position_p_in_slot_p_mod_window():
    model = model_with()
    x = ids(1, 23)
    window_cache, dynamic = SlidingWindowKVCache(model.config, window=5, sink_tokens=2), kvlib.DynamicKVCache()
    with torch.no_grad():
        model(x[:, :9], window_cache), model(x[:, 9:10], window_cache), model(x[:, 10:], window_cache)
        model(x, dynamic)
    # Layer 0's keys depend only on the token and its position, so the two caches must agree there.
    all_keys = dynamic.key_cache[0]  # (1, nh, 23, hs)
    for p in range(18, 23):  # the last 5 positions
        torch.testing.assert_close(window_cache.ring_keys[0][:, :, p % 5], all_keys[:, :, p], atol=1e-6, rtol=0)
    torch.testing.assert_close(window_cache.sink_keys[0], all_keys[:, :, :2], atol=1e-6, rtol=0)  # the first 2 tokens, kept for good
    assert window_cache.kept_positions(23).tolist() == [0, 1, 18, 19, 20, 21, 22]


@pytest.mark.parametrize("n_kv_head", [1, 4])
def test_memory_is_constant_once_full_and_matches_the_formula(n_kv_head):
    model = model_with(n_kv_head)
    cache = SlidingWindowKVCache(model.config, window=6, sink_tokens=2)
    allocated, seen = [], []
    with torch.no_grad():
        model(ids(2, 3), cache)
        for step in range(20):
            model(ids(2, 1, seed=step), cache)
            T = cache.get_seq_length()
            expected = memory.kv_cache_bytes_for_config(model.config, T, batch_size=2, dtype=torch.float32,
                                                        sliding_window=6 + 2)
            assert cache.nbytes == expected  # to the byte: min(T, W + S) tokens of K and V
            allocated.append(cache.nbytes_allocated)
            seen.append(cache.nbytes)
    assert len(set(allocated)) == 1 and allocated[0] == seen[-1]  # S + W slots from the start, all filled at the end
    assert seen[-1] == seen[5]  # constant once full (8 tokens held from T = 8 on)


@pytest.mark.parametrize("window, sinks, error, match", [
    (0, 0, ValueError, r"window must be >= 1"),
    (-3, 0, ValueError, r"window must be >= 1"),
    (4, 4, ValueError, r"sink_tokens must be in \[0, window\) = \[0, 4\), got 4"),
    (4, 7, ValueError, r"sink_tokens must be in \[0, window\)"),
    (4, -1, ValueError, r"sink_tokens must be in \[0, window\)"),
    (4.0, 0, TypeError, r"window must be an int"),
    (4, None, TypeError, r"sink_tokens must be an int"),
])
def test_bad_window_arguments_are_refused(window, sinks, error, match):
    with pytest.raises(error, match=match):
        SlidingWindowKVCache(model_with().config, window, sinks)
    with pytest.raises(error, match=match):
        kvlib.sliding_window_mask(3, 5, window, sinks)


def test_a_windowed_cache_given_to_a_model_of_another_shape_is_refused():
    cache = SlidingWindowKVCache(model_with(4).config, window=4)
    with pytest.raises(ValueError, match=r"built for \(n_layer, n_kv_head, head_dim\) = \(2, 4, 8\).*\(2, 2, 8\)"):
        model_with(2)(ids(1, 3), cache)
    with pytest.raises(TypeError, match="config must be a kvlib.GPT2Config"):
        SlidingWindowKVCache(model_with(4), window=4)
    with pytest.raises(ValueError, match="builds its own banded mask"):
        model_with(4)(ids(1, 3), cache, attention_mask=torch.ones(1, 3))


def test_positions_still_stop_at_n_positions():
    model = model_with()
    cache = SlidingWindowKVCache(model.config, window=8)
    with torch.no_grad():
        model(ids(1, 60), cache)
        with pytest.raises(ValueError, match="exceeds n_positions=64"):
            model(ids(1, 5), cache)  # learned absolute positions: the window does not let GPT-2 stream past them
