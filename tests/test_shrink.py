"""kvlib.measure.shrink on a tiny random model: the sweep runs, and its numbers agree with each other where they must."""
import math

import pytest
import torch

import kvlib
from kvlib.measure import shrink


@pytest.fixture(scope="module")
def result():
    model = kvlib.random_gpt2(kvlib.GPT2Config(n_layer=1, n_head=4, n_embd=16, n_positions=40, vocab_size=53), seed=2)
    ids = torch.randint(0, 53, (40 * 3,), generator=torch.Generator().manual_seed(0))
    return shrink.sweep(model, ids, n_windows=3, quant_windows=1, window=8, sinks=2, group_size=4, residual_length=4,
                        log=lambda *_: None)


def test_gqa_rows_cover_every_valid_head_count_and_mha_agrees_with_itself(result):
    assert [r["n_kv_head"] for r in result["gqa"]] == [4, 2, 1]
    mha = result["gqa"][0]
    assert mha["top1_agreement"] == 1.0
    assert math.isclose(mha["perplexity"], result["window"]["perplexity"]["full"], rel_tol=1e-9)
    assert math.isclose(math.exp(sum(mha["window_nll"]) / 3), mha["perplexity"], rel_tol=1e-6)


def test_quantized_rows_and_their_fp32_reference(result):
    rows = result["quant"]
    assert len(rows) == 8 and {(r["nbits"], r["key_quant"], r["residual_length"]) for r in rows} == {
        (b, k, w) for b in (8, 4) for k in ("token", "channel") for w in (0, 4)}
    # The uncached reference over the first window equals the MHA perplexity of that window.
    first = math.exp(result["gqa"][0]["window_nll"][0])
    for r in rows:
        assert math.isclose(r["perplexity_fp32"], first, rel_tol=1e-5)
        assert 0 < r["key_rel_err"] < 1 and 0 < r["value_rel_err"] < 1
    int8 = [r for r in rows if r["nbits"] == 8]
    int4 = [r for r in rows if r["nbits"] == 4]
    assert max(r["logit_err_mean"] for r in int8) < min(r["logit_err_mean"] for r in int4)


def test_window_rows(result):
    w = result["window"]
    names = ["full", "window 8", "window 6 + 2 sinks"]
    assert list(w["perplexity"]) == names and w["top1_agreement"]["full"] == 1.0
    assert all(len(w["per_position_nll"][n]) == 39 for n in names)
    # Within the window every mask sees the same keys: identical NLL at positions 0..7.
    assert w["per_position_nll"]["window 8"][:8] == pytest.approx(w["per_position_nll"]["full"][:8], abs=1e-6)
    assert len(result["first_token_attention"]) == 1 and 0 < result["first_token_attention"][0] < 1
