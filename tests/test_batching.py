"""Batched generation with left padding: every row computes what its prompt alone computes, rows stop at EOS on
their own, transformers agrees on the same padded batch, bad masks are refused, and padding's memory is counted."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlib
from kvlib.measure.memory import bytes_per_token_for_config
from kvlib.measure.padding import AFTER_EOS_SLOT, NEW_SLOT, PAD_SLOT, PROMPT_SLOT, padding_waste, slot_kinds
from kvlib.model.batching import left_pad, unpad_rows
from tests.conftest import TINY

MODES = ("dynamic", "static", "uncached")
PROMPTS = [[5, 9, 13, 2, 7], [40], [11, 3, 60, 1, 2, 3, 4, 8], [20, 21]]
N_NEW = 10


@pytest.fixture(scope="module")
def model():
    """A tiny random GPT-2 with its 2-D weights scaled ×15: GPT-2's own init (std 0.02) makes a tiny random model
    repeat one token, and varied tokens are what make 'row == solo' catch a wrong position or a leaking pad."""
    m = kvlib.random_gpt2(kvlib.GPT2Config(**TINY), seed=1)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(15)
    return m


def gen(model, input_ids, mode, max_new_tokens=N_NEW, **kwargs):
    use_cache = mode != "uncached"
    return kvlib.generate(model, input_ids, max_new_tokens, use_cache=use_cache,
                          cache=mode if use_cache else "dynamic", **kwargs)


def solo(model, prompt, mode, max_new_tokens=N_NEW, **kwargs):
    return gen(model, torch.tensor([prompt]), mode, max_new_tokens, **kwargs)[0].tolist()


def test_left_pad():
    ids, mask = left_pad([[1, 2, 3], [7]], pad_token_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 7]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long
    for bad, exc in [([], ValueError), ([[1], []], ValueError), ("abc", TypeError), ([[1, -2]], TypeError),
                     ([[1.5]], TypeError), (torch.ones(2, 2), TypeError)]:
        with pytest.raises(exc):
            left_pad(bad, pad_token_id=0)
    with pytest.raises(TypeError, match="pad_token_id"):
        left_pad([[1]], pad_token_id=None)


def test_unpad_rows():
    seq = torch.tensor([[0, 0, 7, 4, 9, 9], [1, 2, 3, 9, 5, 6]])
    mask = torch.tensor([[0, 0, 1], [1, 1, 1]])
    assert unpad_rows(seq, mask) == [[7, 4, 9, 9], [1, 2, 3, 9, 5, 6]]
    assert unpad_rows(seq, mask, eos_token_id=9) == [[7, 4, 9], [1, 2, 3, 9]]
    with pytest.raises(ValueError, match="same B"):
        unpad_rows(seq, mask[:1])


def test_slot_kinds():
    seq = torch.tensor([[0, 0, 7, 4, 9, 3], [1, 2, 3, 5, 9, 9]])
    mask = torch.tensor([[0, 0, 1], [1, 1, 1]])
    P, R, N, A = PAD_SLOT, PROMPT_SLOT, NEW_SLOT, AFTER_EOS_SLOT
    assert slot_kinds(seq, mask, eos_token_id=9).tolist() == [[P, P, R, N, N, A], [R, R, R, N, N, A]]
    assert slot_kinds(seq, mask).tolist() == [[P, P, R, N, N, N], [R, R, R, N, N, N]]
    with pytest.raises(ValueError):
        slot_kinds(seq[:, :2], mask)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_each_row_equals_its_solo_run(model, mode, batch_size):
    prompts = PROMPTS[:batch_size]
    ids, mask = left_pad(prompts, pad_token_id=0)
    out = gen(model, ids, mode, attention_mask=mask)
    assert out.shape == (batch_size, ids.shape[1] + N_NEW)
    assert unpad_rows(out, mask) == [solo(model, p, mode) for p in prompts]


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    prompts=st.lists(st.lists(st.integers(0, TINY["vocab_size"] - 1), min_size=1, max_size=9), min_size=1, max_size=4),
    pad=st.integers(0, TINY["vocab_size"] - 1),
    mode=st.sampled_from(MODES),
)
def test_each_row_equals_its_solo_run_property(model, prompts, pad, mode):
    ids, mask = left_pad(prompts, pad_token_id=pad)
    out = gen(model, ids, mode, max_new_tokens=6, attention_mask=mask)
    assert unpad_rows(out, mask) == [solo(model, p, "dynamic", 6) for p in prompts]


def test_padded_logits_equal_solo_logits(model):
    ids, mask = left_pad(PROMPTS, pad_token_id=3)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask)  # (B, T, V)
        for i, p in enumerate(PROMPTS):
            alone = model(torch.tensor([p]))[0]  # (T_i, V)
            torch.testing.assert_close(batched[i, ids.shape[1] - len(p):], alone, atol=1e-4, rtol=1e-5)


def test_pad_token_value_is_invisible(model):
    outs = []
    for pad in (0, 50, 96):
        ids, mask = left_pad(PROMPTS, pad_token_id=pad)
        outs.append(unpad_rows(gen(model, ids, "dynamic", attention_mask=mask), mask))
    assert outs[0] == outs[1] == outs[2]


def test_all_ones_mask_equals_no_mask(model):
    ids = torch.tensor([PROMPTS[0], PROMPTS[0][::-1]])
    for mode in MODES:
        assert torch.equal(gen(model, ids, mode, attention_mask=torch.ones_like(ids, dtype=torch.bool)),
                           gen(model, ids, mode))


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_transformers_generates_the_same_padded_batch(model, cache_implementation):
    hf = model.to_hf()
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=N_NEW, do_sample=False, eos_token_id=None,
                           pad_token_id=0, cache_implementation=cache_implementation)
    assert torch.equal(gen(model, ids, cache_implementation, attention_mask=mask), expected)


def early_eos_case(model):
    """(row, step, eos, runs): the earliest new token (step >= 1) of some row that no other row emits and that
    row has not emitted before, so with it as EOS exactly that row stops early. runs: each row's solo new tokens."""
    runs = [solo(model, p, "dynamic")[len(p):] for p in PROMPTS]
    for step in range(1, N_NEW - 1):
        for row, run in enumerate(runs):
            others = {t for i, r in enumerate(runs) if i != row for t in r}
            if run[step] not in others and run[step] not in run[:step]:
                return row, step, run[step], runs
    raise AssertionError("test setup: no row has a token that the other rows never emit")


@pytest.mark.parametrize("mode", MODES)
def test_rows_stop_at_eos_while_the_batch_goes_on(model, mode):
    row, step, eos, runs = early_eos_case(model)
    pad = next(t for t in range(TINY["vocab_size"]) if t != eos)
    ids, mask = left_pad(PROMPTS, pad_token_id=pad)
    out = gen(model, ids, mode, attention_mask=mask, eos_token_id=eos, pad_token_id=pad)
    T_prompt = ids.shape[1]
    assert out.shape == (len(PROMPTS), T_prompt + N_NEW)  # the others ran the full N_NEW steps
    new = out[:, T_prompt:].tolist()
    assert new[row][: step + 1] == runs[row][: step + 1] and new[row][step] == eos  # solo run up to and with EOS
    assert new[row][step + 1:] == [pad] * (N_NEW - step - 1)  # then padding
    for i in range(len(PROMPTS)):
        if i != row:
            assert new[i] == runs[i]  # the other rows are untouched by one row stopping
    rows = unpad_rows(out, mask, eos_token_id=eos)
    assert rows == [solo(model, p, mode, eos_token_id=eos) for p in PROMPTS]
    hf = model.to_hf()
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=N_NEW, do_sample=False, eos_token_id=eos,
                           pad_token_id=pad)
    assert torch.equal(out, expected)


def test_generation_stops_when_every_row_has_finished(model):
    row, step, eos, _ = early_eos_case(model)
    ids, mask = left_pad([PROMPTS[row]] * 3, pad_token_id=0)  # three copies of the row that stops
    out = kvlib.generate(model, ids, N_NEW, attention_mask=mask, eos_token_id=eos)
    assert out.shape[1] == ids.shape[1] + step + 1 and (out[:, -1] == eos).all()


BAD_MASKS = {
    "wrong shape": (lambda ids: torch.ones(ids.shape[0], ids.shape[1] + 1, dtype=torch.long), ValueError, "shape"),
    "one row missing": (lambda ids: torch.ones(ids.shape[0] - 1, ids.shape[1], dtype=torch.long), ValueError, "shape"),
    "right padding": (lambda ids: torch.tensor([[1, 1, 1], [1, 0, 0]]), ValueError, "left-padded"),
    "hole in the middle": (lambda ids: torch.tensor([[1, 1, 1], [1, 0, 1]]), ValueError, "left-padded"),
    "all-padding row": (lambda ids: torch.tensor([[1, 1, 1], [0, 0, 0]]), ValueError, "padding only"),
    "value 2": (lambda ids: torch.tensor([[1, 1, 1], [0, 2, 2]]), ValueError, "only 1"),
    "value 0.5": (lambda ids: torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.5, 1.0]]), ValueError, "only 1"),
    "a list, not a tensor": (lambda ids: [[1, 1, 1], [0, 1, 1]], TypeError, "must be a tensor"),
}


@pytest.mark.parametrize("name", list(BAD_MASKS))
@pytest.mark.parametrize("mode", MODES)
def test_bad_masks_are_refused(model, name, mode):
    make, exc, match = BAD_MASKS[name]
    ids = torch.tensor([[1, 2, 3], [0, 4, 5]])
    with pytest.raises(exc, match=match):
        gen(model, ids, mode, max_new_tokens=2, attention_mask=make(ids))


def test_padding_waste_of_a_gpt2_small_batch():
    config = kvlib.GPT2Config.from_name("gpt2")
    _, mask = left_pad([[1] * 100, [1] * 10, [1] * 40], pad_token_id=0)
    waste = padding_waste(mask, config)  # fp32 by default
    assert waste["kv_bytes_per_token"] == 2 * 12 * 768 * 4 == 73_728
    assert waste["padding_slots"] == 90 + 60 and waste["padding_bytes"] == 150 * 73_728
    assert waste["padding_fraction"] == pytest.approx(150 / 300)
    assert padding_waste(mask, config, torch.float16)["padding_bytes"] == 150 * 36_864
    with pytest.raises(TypeError):
        padding_waste(mask, {"n_layer": 12})


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_padding_waste_matches_the_bytes_a_real_cache_holds(model, kind):
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    waste = padding_waste(mask, model.config, max_new_tokens=N_NEW)
    B, T_prompt = ids.shape
    n_pad = sum(T_prompt - len(p) for p in PROMPTS)
    assert waste["padding_slots"] == n_pad and waste["total_slots"] == B * (T_prompt + N_NEW)
    assert waste["padding_bytes"] == n_pad * bytes_per_token_for_config(model.config, torch.float32)
    cache = kvlib.make_cache(model, kind, B, T_prompt + N_NEW)
    with torch.inference_mode():
        logits = kvlib.prefill(model, ids, cache, mask)
        full = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        token = logits.argmax(-1)
        for _ in range(N_NEW):  # fill the cache to the end, as a generation of N_NEW tokens would
            token = kvlib.decode_one_token(model, token, cache, full).argmax(-1)
            full = torch.cat([full, full.new_ones(B, 1)], dim=1)
    assert cache.nbytes == waste["total_bytes"]  # every slot, padding included, holds K and V
    assert waste["padding_bytes"] / cache.nbytes == pytest.approx(waste["padding_fraction"])
    with pytest.raises(ValueError):
        padding_waste(mask[0], model.config)
