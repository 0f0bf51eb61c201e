"""kvlib.measure.flops: the analytic FLOP formulas equal torch's FlopCounterMode on kvlib's eager attention, exactly."""
import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import kvlib
from kvlib.measure.flops import (
    FlopCount,
    attention_crossover,
    forward_flops,
    generation_flops,
    measure_flops,
    measure_forward_flops,
    measure_step_flops,
    step_flops,
)

CONFIGS = {
    "tiny": dict(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=97),
    "one-head": dict(n_layer=1, n_head=1, n_embd=24, n_positions=40, vocab_size=50),
    "three-layers": dict(n_layer=3, n_head=6, n_embd=48, n_positions=80, vocab_size=211),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request) -> kvlib.GPT2:
    return kvlib.random_gpt2(kvlib.GPT2Config(**CONFIGS[request.param]), seed=3)


def test_flop_counter_counts_a_multiply_add_as_two_flops():
    a, b, bias = torch.randn(3, 5), torch.randn(5, 7), torch.randn(7)
    batch_a, batch_b = torch.randn(4, 3, 5), torch.randn(4, 5, 7)
    for fn, expected in [(lambda: a @ b, 2 * 3 * 5 * 7), (lambda: torch.addmm(bias, a, b), 2 * 3 * 5 * 7),
                         (lambda: batch_a @ batch_b, 2 * 4 * 3 * 5 * 7)]:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        assert counter.get_total_flops() == expected  # bias adds are not counted


@pytest.mark.parametrize("t", [1, 2, 7, 33])
@pytest.mark.parametrize("use_cache", [False, True])
def test_step_flops_match_flop_counter(model, t, use_cache):
    measured = measure_step_flops(model, t, use_cache=use_cache)
    assert measured == step_flops(model.config, t, use_cache=use_cache)
    assert measured.attention > 0 and measured.linear > 0 and measured.lm_head > 0


@pytest.mark.parametrize("T_new,T_total,logits_to_keep,batch_size", [
    (5, 5, 0, 1), (3, 11, 0, 2), (4, 9, 2, 3), (6, 6, 100, 1), (1, 1, 0, 2),
])
def test_forward_flops_match_flop_counter(model, T_new, T_total, logits_to_keep, batch_size):
    measured = measure_forward_flops(model, T_new, T_total, batch_size=batch_size, logits_to_keep=logits_to_keep)
    assert measured == forward_flops(model.config, T_new, T_total, batch_size=batch_size,
                                     logits_to_keep=logits_to_keep)


@pytest.mark.parametrize("prompt_len,max_new_tokens", [(1, 1), (1, 12), (5, 8), (9, 0)])
@pytest.mark.parametrize("use_cache", [False, True])
def test_generation_flops_match_flop_counter_on_generate(model, prompt_len, max_new_tokens, use_cache):
    prompt = torch.randint(0, model.config.vocab_size, (2, prompt_len), generator=torch.Generator().manual_seed(0))
    measured = measure_flops(model, lambda: kvlib.generate(model, prompt, max_new_tokens, use_cache=use_cache))
    assert measured == generation_flops(model.config, prompt_len, max_new_tokens, use_cache=use_cache, batch_size=2)


@pytest.mark.parametrize("prompt_len", [1, 4, 17])
@pytest.mark.parametrize("max_new_tokens", [1, 2, 10, 100])
@pytest.mark.parametrize("use_cache", [False, True])
def test_generation_flops_equal_sum_of_steps(prompt_len, max_new_tokens, use_cache):
    config = kvlib.GPT2Config()  # closed forms are checked on GPT-2 small's shapes, far past n_positions too
    first = forward_flops(config, prompt_len, prompt_len, logits_to_keep=1)  # prefill, or the first full pass
    later = [step_flops(config, prompt_len + s, use_cache=use_cache) for s in range(1, max_new_tokens)]
    assert generation_flops(config, prompt_len, max_new_tokens, use_cache=use_cache) == sum(later, first)


def test_cache_saves_flops_and_both_agree_on_the_first_step():
    config = kvlib.GPT2Config()
    assert generation_flops(config, 7, 1, use_cache=True) == generation_flops(config, 7, 1, use_cache=False)
    cached = generation_flops(config, 7, 50, use_cache=True)
    uncached = generation_flops(config, 7, 50, use_cache=False)
    assert cached.lm_head == uncached.lm_head  # one row of logits per step either way
    assert cached.linear < uncached.linear and cached.attention < uncached.attention


def test_sdpa_attention_is_invisible_to_the_flop_counter_on_cpu():
    config = kvlib.GPT2Config(**CONFIGS["tiny"], attn_implementation="sdpa")
    model = kvlib.random_gpt2(config)
    for use_cache in (False, True):
        measured = measure_step_flops(model, 9, use_cache=use_cache)
        expected = step_flops(config, 9, use_cache=use_cache)
        assert measured.attention == 0 and expected.attention > 0
        assert dataclasses.replace(measured, attention=expected.attention) == expected


@pytest.mark.parametrize("use_cache", [False, True])
@pytest.mark.parametrize("include_lm_head", [False, True])
@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium", "gpt2-xl"])
def test_attention_crossover_is_the_first_length_where_attention_reaches_the_rest(name, use_cache, include_lm_head):
    config = kvlib.GPT2Config.from_name(name)
    t = attention_crossover(config, use_cache=use_cache, include_lm_head=include_lm_head)

    def reached(length):
        f = step_flops(config, length, use_cache=use_cache)
        return f.attention >= (f.rest if include_lm_head else f.linear)

    assert reached(t) and not reached(t - 1)
    if not include_lm_head:
        assert t == 6 * config.n_embd
    elif use_cache:
        assert t == -(-(12 * config.n_layer * config.n_embd + config.vocab_size) // (2 * config.n_layer))


def test_flop_count_arithmetic():
    a, b = FlopCount(1, 2, 3), FlopCount(10, 20, 30)
    assert a + b == FlopCount(11, 22, 33)
    assert (a.rest, a.total) == (5, 6)
    with pytest.raises(TypeError):
        a + 1


@pytest.mark.parametrize("call,error,match", [
    (lambda c: forward_flops(c, 0, 4), ValueError, "T_new must be >= 1"),
    (lambda c: forward_flops(c, 5, 4), ValueError, "cannot exceed T_total"),
    (lambda c: forward_flops(c, 2.0, 4), TypeError, "T_new must be an int"),
    (lambda c: forward_flops(c, True, 4), TypeError, "T_new must be an int"),
    (lambda c: forward_flops(c, 1, 4, batch_size=0), ValueError, "batch_size"),
    (lambda c: forward_flops(c, 1, 4, logits_to_keep=-1), ValueError, "logits_to_keep"),
    (lambda c: forward_flops({"n_embd": 768}, 1, 4), TypeError, "kvlib.GPT2Config"),
    (lambda c: step_flops(c, 0, use_cache=True), ValueError, "t must be >= 1"),
    (lambda c: step_flops(c, 3, use_cache="yes"), TypeError, "use_cache"),
    (lambda c: generation_flops(c, 0, 3, use_cache=True), ValueError, "prompt_len"),
    (lambda c: generation_flops(c, 2, -1, use_cache=False), ValueError, "max_new_tokens"),
    (lambda c: attention_crossover(c, use_cache=True, include_lm_head=None), TypeError, "include_lm_head"),
    (lambda c: measure_step_flops(c, 3, use_cache=True), TypeError, "model must be a kvlib.GPT2"),
    (lambda c: measure_flops(kvlib.random_gpt2(c), "not callable"), TypeError, "fn must be a callable"),
])
def test_bad_input_is_rejected_with_a_clear_message(call, error, match):
    with pytest.raises(error, match=match):
        call(kvlib.GPT2Config(**CONFIGS["tiny"]))


def test_measurement_past_n_positions_is_refused_by_the_model(model):
    with pytest.raises(ValueError, match="n_positions"):
        measure_step_flops(model, model.config.n_positions + 1, use_cache=True)
