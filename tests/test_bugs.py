"""Each deliberately broken KV-cache piece in kvlib.teaching.bugs must make cached output differ from the uncached model,
and the correct piece in the same place must match it (on a tiny seeded GPT-2)."""
import pytest
import torch

import kvlib
from kvlib import attention
from kvlib.teaching import bugs

MATCH = 1e-5  # cached vs uncached logits, fp32: the same sums in another order
DIFFER = 1e-3  # a bug moves some logit by far more than rounding can


def make_cache(model, kind, max_seq_len=32):
    return kvlib.make_cache(model, kind, 1, max_seq_len)


@pytest.fixture
def ids(tiny_config):
    return torch.randint(0, tiny_config.vocab_size, (1, 11), generator=torch.Generator().manual_seed(3))


@pytest.fixture
def reference(tiny_model, ids):
    with torch.no_grad():
        return tiny_model(ids)  # (1, 11, V): the uncached forward, the oracle


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("kind", ["dynamic", "static"])
@pytest.mark.parametrize("chunks", [(11,), (1, 3, 7), (1,) * 11, (8, 1, 1, 1)])
def test_correct_pieces_match_uncached(tiny_model, ids, reference, kind, chunks):
    logits = bugs.cached_logits(tiny_model, ids, make_cache(tiny_model, kind), chunks)
    assert max_diff(logits, reference) < MATCH


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_a_unoffset_mask_fails_chunked_prefill(tiny_model, ids, reference, kind):
    cache = make_cache(tiny_model, kind)
    logits = bugs.cached_logits(tiny_model, ids, cache, (1, 3, 7), mask_fn=bugs.unoffset_causal_mask)
    assert max_diff(logits[:, :1], reference[:, :1]) < MATCH  # the first chunk has no prefix: still right
    assert max_diff(logits[:, 4:], reference[:, 4:]) > DIFFER  # the 7-token chunk after a 4-token prefix: wrong


def test_a_unoffset_mask_hides_behind_one_shot_prefill(tiny_model, ids, reference):
    # Why the bug survives simple tests: nothing cached before the prompt, one token at a time afterwards.
    logits = bugs.cached_logits(tiny_model, ids, kvlib.DynamicKVCache(), (8, 1, 1, 1), mask_fn=bugs.unoffset_causal_mask)
    assert max_diff(logits, reference) < MATCH


def test_a_unoffset_mask_fails_plain_decoding_when_every_forward_is_masked(tiny_model, ids, reference):
    # The from-scratch engine's version slices its mask on every forward, one-token decode steps included: each
    # new token then sees key 0 only. kvlib's choice of no mask for T_new == 1 is what hides the bug above.
    one_shot = (8, 1, 1, 1)
    correct = bugs.cached_logits(tiny_model, ids, kvlib.DynamicKVCache(), one_shot, mask_every_forward=True)
    broken = bugs.cached_logits(tiny_model, ids, kvlib.DynamicKVCache(), one_shot, mask_fn=bugs.unoffset_causal_mask,
                                mask_every_forward=True)
    assert max_diff(correct, reference) < MATCH  # the offset mask is right for a single token too
    assert max_diff(broken[:, :8], reference[:, :8]) < MATCH  # the prefill: nothing cached, still right
    assert max_diff(broken[:, 8:], reference[:, 8:]) > DIFFER  # every decode step: wrong


def test_a_unoffset_mask_rows():
    good, bad = kvlib.causal_mask(2, 5), bugs.unoffset_causal_mask(2, 5)
    assert good.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert bad.tolist() == [[True, False, False, False, False], [True, True, False, False, False]]
    assert torch.equal(bugs.unoffset_causal_mask(4, 4), kvlib.causal_mask(4, 4))  # equal without a prefix


@pytest.mark.parametrize("chunks", [(1, 3, 7), (8, 1, 1, 1)])
def test_b_restarting_positions_fail(tiny_model, ids, reference, chunks):
    cache = kvlib.DynamicKVCache()
    logits = bugs.cached_logits(tiny_model, ids, cache, chunks, position_fn=bugs.restarting_position_ids)
    assert max_diff(logits[:, : chunks[0]], reference[:, : chunks[0]]) < MATCH  # the first chunk starts at 0 anyway
    assert max_diff(logits, reference) > DIFFER


def test_c_whole_buffer_static_cache_fails(tiny_model, ids, reference):
    broken = bugs.cached_logits(tiny_model, ids, bugs.WholeBufferStaticKVCache(tiny_model.config, 1, 16), (1,) * 11)
    assert max_diff(broken, reference) > DIFFER
    longer = bugs.cached_logits(tiny_model, ids, bugs.WholeBufferStaticKVCache(tiny_model.config, 1, 64), (1,) * 11)
    assert max_diff(longer, broken) > DIFFER  # the answer depends on max_seq_len: the empty slots take weight
    fixed = bugs.cached_logits(tiny_model, ids, kvlib.StaticKVCache(tiny_model.config, 1, 16), (1,) * 11)
    assert max_diff(fixed, reference) < MATCH


def test_c_whole_buffer_fails_loudly_on_a_multi_token_forward(tiny_model, ids):
    with pytest.raises(RuntimeError):  # the (T_new, T_total) mask cannot broadcast over max_seq_len keys
        bugs.cached_logits(tiny_model, ids, bugs.WholeBufferStaticKVCache(tiny_model.config, 1, 16), (11,))


def test_d_no_causal_mask_fails_on_a_prompt(tiny_model, ids, reference):
    logits = bugs.cached_logits(tiny_model, ids, kvlib.DynamicKVCache(), (8, 1, 1, 1), mask_fn=bugs.no_causal_mask)
    assert max_diff(logits[:, :7], reference[:, :7]) > DIFFER  # prompt tokens saw their future
    assert max_diff(logits[:, 8:], reference[:, 8:]) > DIFFER  # and decoding reads the K/V they left in the cache


def test_d_no_causal_mask_is_harmless_one_token_at_a_time(tiny_model, ids, reference):
    logits = bugs.cached_logits(tiny_model, ids, kvlib.DynamicKVCache(), (1,) * 11, mask_fn=bugs.no_causal_mask)
    assert max_diff(logits, reference) < MATCH


def test_e_top_left_causal_sees_only_the_first_key():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, t, 4, generator=g) for t in (1, 5, 5))  # T_q = 1, T_k = 5
    out = bugs.top_left_causal_sdpa(q, k, v)
    assert torch.allclose(out, v[:, :, :1], atol=1e-6)  # all weight on key 0
    assert not torch.allclose(out, kvlib.sdpa_attention(q, k, v), atol=1e-3)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_e_is_causal_during_cached_decoding_fails(tiny_config, ids, implementation):
    tiny_config.attn_implementation = implementation
    model = kvlib.random_gpt2(tiny_config, seed=1)
    with torch.no_grad():
        reference = model(ids)
    with bugs.swap_attention(implementation, bugs.top_left_causal_sdpa):
        with torch.no_grad():
            uncached = model(ids)  # T_q == T_k: top-left is the right triangle
        decoded = bugs.cached_logits(model, ids, kvlib.DynamicKVCache(), (8, 1, 1, 1))
    assert max_diff(uncached, reference) < MATCH
    assert max_diff(decoded[:, :8], reference[:, :8]) < MATCH  # the prefill is right
    assert max_diff(decoded[:, 8:], reference[:, 8:]) > DIFFER  # every decode step is wrong


def test_swap_attention_restores_the_original_even_on_error():
    original = attention.ATTENTION_FUNCTIONS["eager"]
    with pytest.raises(KeyError):
        with bugs.swap_attention("eager", bugs.top_left_causal_sdpa):
            assert attention.ATTENTION_FUNCTIONS["eager"] is bugs.top_left_causal_sdpa
            raise KeyError("boom")
    assert attention.ATTENTION_FUNCTIONS["eager"] is original
    with pytest.raises(ValueError, match="implementation must be one of"):
        with bugs.swap_attention("flash", bugs.top_left_causal_sdpa):
            pass
    with pytest.raises(TypeError):
        with bugs.swap_attention("eager", "not a function"):
            pass


def test_f_stateful_wrapper_leaks_the_first_request_into_the_second(tiny_model, ids):
    first, second = ids[:, :6], ids[:, 6:]
    with torch.no_grad():
        first_ref, second_ref = tiny_model(first), tiny_model(second)
    stateful = bugs.StatefulGPT2(tiny_model)
    assert max_diff(stateful(first), first_ref) < MATCH  # the first request is right
    assert max_diff(stateful(second), second_ref) > DIFFER  # the second continues the first
    stateful.reset()
    assert max_diff(stateful(second), second_ref) < MATCH  # a fresh cache per request fixes it


def test_f_stateful_generate_reuses_the_cache(tiny_model, ids):
    stateful = bugs.StatefulGPT2(tiny_model)
    stateful.generate(ids[:, :4], 3)
    assert stateful.cache.get_seq_length() == 4 + 3 - 1  # the last token is never fed
    stateful.generate(ids[:, :4], 3)
    assert stateful.cache.get_seq_length() == 2 * (4 + 3 - 1)  # the second request piled on top


@pytest.mark.parametrize("kind", ["dynamic", "static"])
@pytest.mark.parametrize("prompt_chunks", [None, (2, 2, 2)])
def test_cached_greedy_equals_the_uncached_loop(tiny_model, ids, kind, prompt_chunks):
    expected = kvlib.generate(tiny_model, ids[:, :6], 8, use_cache=False)
    got = bugs.cached_greedy(tiny_model, ids[:, :6], 8, make_cache(tiny_model, kind), prompt_chunks=prompt_chunks)
    assert torch.equal(got.sequences, expected)
    with torch.no_grad():
        assert max_diff(got.logits, tiny_model(got.sequences[:, :-1])) < MATCH  # every fed position's logits


def test_bad_arguments_are_rejected(tiny_model, ids):
    with pytest.raises(ValueError, match="chunk_sizes"):
        bugs.cached_logits(tiny_model, ids, kvlib.DynamicKVCache(), (4, 4))
    with pytest.raises(ValueError, match="chunk_sizes"):
        bugs.cached_logits(tiny_model, ids, kvlib.DynamicKVCache(), (0, 11))
    with pytest.raises(ValueError, match="max_new_tokens"):
        bugs.cached_greedy(tiny_model, ids, 0, kvlib.DynamicKVCache())
    with pytest.raises(TypeError):
        bugs.StatefulGPT2("gpt2")


@pytest.mark.parametrize("variant", ["a", "b", "c", "d", "e"])
def test_greedy_logits_expose_each_bug(tiny_model, ids, variant):
    # The greedy loop returns the logits it computed; the uncached forward over the same tokens is the oracle.
    prompt = ids[:, :6]
    kwargs = {
        "a": dict(prompt_chunks=(1, 2, 3), mask_fn=bugs.unoffset_causal_mask),
        "b": dict(position_fn=bugs.restarting_position_ids),
        "c": dict(prompt_chunks=(1,) * 6),
        "d": dict(mask_fn=bugs.no_causal_mask),
        "e": {},
    }[variant]
    cache = bugs.WholeBufferStaticKVCache(tiny_model.config, 1, 32) if variant == "c" else kvlib.DynamicKVCache()
    if variant == "e":
        with bugs.swap_attention(tiny_model.config.attn_implementation, bugs.top_left_causal_sdpa):
            out = bugs.cached_greedy(tiny_model, prompt, 8, cache)
    else:
        out = bugs.cached_greedy(tiny_model, prompt, 8, cache, **kwargs)
    with torch.no_grad():
        assert max_diff(out.logits, tiny_model(out.sequences[:, :-1])) > DIFFER


def test_check_passes_only_on_the_same_text_within_the_tolerance():
    assert bugs.Check(same_text=True, max_diff=1e-5, tol=1e-4).passes
    assert bugs.Check(same_text=True, max_diff=1e-3, tol=1e-4).caught  # logits alone catch it
    assert bugs.Check(same_text=False, max_diff=0.0, tol=1e-4).caught
    assert bugs.Check(same_text=True, max_diff=float("nan"), tol=1e-4).caught  # NaN logits never pass
