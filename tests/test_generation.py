import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlib

ATOL = 1e-5  # fp32 cached vs uncached: the same sums in another order


def prompt_ids(model, B=1, T=7, seed=0):
    return torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def chunked_logits(model, ids, chunks, cache):
    out, start = [], 0
    for size in chunks:
        out.append(model(ids[:, start:start + size], cache))
        start += size
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("kind", ["dynamic", "static"])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_chunked_prefill_equals_one_forward(tiny_model, kind, B, attn_implementation):
    tiny_model.config.attn_implementation = attn_implementation
    ids = prompt_ids(tiny_model, B=B, T=1 + 3 + 7 + 2)
    with torch.no_grad():
        full = tiny_model(ids)
        cache = kvlib.make_cache(tiny_model, kind, B, ids.shape[1])
        chunked = chunked_logits(tiny_model, ids, [1, 3, 7, 2], cache)
    torch.testing.assert_close(chunked, full, atol=ATOL, rtol=0)
    assert cache.get_seq_length() == ids.shape[1]


@settings(max_examples=25, deadline=None)
@given(
    n_layer=st.integers(1, 3), n_head=st.integers(1, 4), head_dim=st.integers(2, 12),
    vocab_size=st.integers(5, 60), chunks=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    kind=st.sampled_from(["dynamic", "static"]), seed=st.integers(0, 2**16),
)
def test_property_cached_logits_equal_uncached(n_layer, n_head, head_dim, vocab_size, chunks, kind, seed):
    config = kvlib.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_head * head_dim, vocab_size=vocab_size,
                              n_positions=64)
    model = kvlib.random_gpt2(config, seed=seed)
    ids = prompt_ids(model, B=2, T=sum(chunks), seed=seed)
    with torch.no_grad():
        full = model(ids)
        chunked = chunked_logits(model, ids, chunks, kvlib.make_cache(model, kind, 2, sum(chunks)))
    torch.testing.assert_close(chunked, full, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_batch_rows_equal_each_prompt_alone(tiny_model, kind):
    ids = prompt_ids(tiny_model, B=3, T=5, seed=3)
    batch = kvlib.generate(tiny_model, ids, 30, cache=kind)
    for row in range(3):
        alone = kvlib.generate(tiny_model, ids[row:row + 1], 30, cache=kind)
        assert torch.equal(batch[row:row + 1], alone)


def test_cached_and_uncached_greedy_agree_for_long_generation(tiny_model):
    ids = prompt_ids(tiny_model, T=4)
    uncached = kvlib.generate(tiny_model, ids, 150, use_cache=False)
    assert torch.equal(kvlib.generate(tiny_model, ids, 150, cache="dynamic"), uncached)
    assert torch.equal(kvlib.generate(tiny_model, ids, 150, cache="static"), uncached)


def test_sampling_is_reproducible_and_top_k_1_is_greedy(tiny_model):
    ids = prompt_ids(tiny_model, B=2, T=4)

    def sample(**kw):
        return kvlib.generate(tiny_model, ids, 40, temperature=1.0, generator=torch.Generator().manual_seed(7), **kw)

    assert torch.equal(sample(), sample())
    assert torch.equal(sample(cache="static"), sample(use_cache=False))
    assert not torch.equal(sample(), kvlib.generate(tiny_model, ids, 40))  # sampling differs from greedy here
    assert torch.equal(sample(top_k=1), kvlib.generate(tiny_model, ids, 40))


def test_generation_stops_after_eos_and_streams_tokens(tiny_model):
    ids = prompt_ids(tiny_model, T=4)
    greedy = kvlib.generate(tiny_model, ids, 20)
    eos = int(greedy[0, 4 + 5])  # the 6th generated token
    first = int((greedy[0, 4:] == eos).nonzero()[0])  # it may also occur earlier
    streamed = []
    out = kvlib.generate(tiny_model, ids, 20, eos_token_id=eos, on_token=lambda t: streamed.append(int(t[0])))
    assert torch.equal(out, greedy[:, :4 + first + 1])  # everything up to and including the first EOS
    assert streamed == out[0, 4:].tolist()



@pytest.mark.parametrize("use_cache", [True, False])
def test_generated_ids_can_train_the_model(tiny_model, use_cache):
    # generate runs under inference_mode; what it returns and streams must still be ordinary tensors, usable in a
    # grad-enabled forward (an inference tensor saved for backward would raise there).
    streamed = []
    out = kvlib.generate(tiny_model, prompt_ids(tiny_model, T=4), 3, use_cache=use_cache, on_token=streamed.append)
    assert not out.is_inference() and not any(t.is_inference() for t in streamed)
    loss = tiny_model(out).logsumexp(-1).mean() + tiny_model(torch.stack(streamed, 1)).mean()
    loss.backward()
    assert tiny_model.transformer.wte.weight.grad is not None
    # and a no-grad forward after generate still uses (and may rebuild) the CPU LM-head copy without complaint
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(out), tiny_model(out.clone()))

def test_max_new_tokens_zero_returns_prompt(tiny_model):
    ids = prompt_ids(tiny_model, T=4)
    assert torch.equal(kvlib.generate(tiny_model, ids, 0), ids)


@pytest.mark.parametrize(
    "make_args, error, match",
    [
        (lambda m: (torch.zeros(1, 0, dtype=torch.long), 5), ValueError, "empty"),
        (lambda m: (torch.zeros(1, 250, dtype=torch.long), 10), ValueError, "n_positions=256"),
        (lambda m: (torch.zeros(1, 3), 5), TypeError, "torch.long"),
        (lambda m: (torch.zeros(3, dtype=torch.long), 5), ValueError, "input_ids\\[None\\]"),
        (lambda m: ([[1, 2, 3]], 5), TypeError, "LongTensor"),
        (lambda m: (torch.tensor([[1, 500]]), 5), ValueError, "\\[0, 97\\)"),
        (lambda m: (torch.tensor([[1, 2]]), -1), ValueError, "max_new_tokens must be >= 0"),
        (lambda m: (torch.tensor([[1, 2]]), 2.0), TypeError, "max_new_tokens must be an int"),
    ],
    ids=["empty", "too-long", "float-ids", "rank-1", "list", "out-of-vocab", "negative-new", "float-new"],
)
def test_bad_generate_input_says_what_is_wrong(tiny_model, make_args, error, match):
    ids, n = make_args(tiny_model)
    with pytest.raises(error, match=match):
        kvlib.generate(tiny_model, ids, n)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(cache="pagedd"), "cache must be one of"), (dict(temperature=-1.0), "temperature"),
     (dict(top_k=0), "top_k"), (dict(eos_token_id=1000), "eos_token_id"),
     (dict(eos_token_id=3, pad_token_id=-1), "pad_token_id")],
)
def test_bad_generate_options_say_what_is_allowed(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kvlib.generate(tiny_model, torch.tensor([[1, 2]]), 3, **kwargs)


def test_cache_built_for_another_batch_size_fails_clearly(tiny_model, tiny_config):
    cache = kvlib.StaticKVCache(tiny_config, 2, 16)
    with pytest.raises(ValueError, match="built for \\(batch, heads, head_dim\\) = \\(2"):
        tiny_model(torch.tensor([[1, 2, 3]]), cache)


def test_forward_past_n_positions_through_cache_fails_clearly(tiny_model, tiny_config):
    cache = kvlib.DynamicKVCache()
    tiny_model(torch.zeros(1, 250, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="250 cached \\+ 7 new tokens = 257 exceeds n_positions=256"):
        tiny_model(torch.zeros(1, 7, dtype=torch.long), cache)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible by n_head"):
        kvlib.GPT2Config(n_embd=10, n_head=3)
    with pytest.raises(TypeError, match="must be an int"):
        kvlib.GPT2Config(n_layer=2.0)
    with pytest.raises(ValueError, match="attn_implementation"):
        kvlib.GPT2Config(attn_implementation="flash")
    with pytest.raises(ValueError, match="known sizes"):
        kvlib.GPT2Config.from_name("gpt5")


def test_lm_head_cpu_copy_equals_linear_and_follows_weight_changes(tiny_model):
    """Inference on CPU multiplies by a (C, V) copy of the tied (V, C) weight; it must never go stale."""
    x = torch.randn(2, 3, tiny_model.config.n_embd)
    head = tiny_model.lm_head
    for change in (lambda: None, lambda: tiny_model.transformer.wte.weight.mul_(2.0),  # in place: same pointer
                   lambda: tiny_model.double(), lambda: tiny_model.float()):  # new storage and dtype
        with torch.no_grad():
            change()
            got = head(x.to(head.weight.dtype))
            assert got.dtype == head.weight.dtype
            torch.testing.assert_close(got, torch.nn.functional.linear(x.to(head.weight.dtype), head.weight))
