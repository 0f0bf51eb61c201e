"""kvlib.measure.shrink on a tiny random model: the sweep runs, and its numbers agree with each other where they must;
the paired statistics it reports are the textbook ones."""
import math

import pytest
import torch

import kvlib
from kvlib.measure import quality, shrink


@pytest.fixture(scope="module")
def result():
    model = kvlib.random_gpt2(kvlib.GPT2Config(n_layer=1, n_head=4, n_embd=16, n_positions=40, vocab_size=53), seed=2)
    ids = torch.randint(0, 53, (40 * 5 + 7,), generator=torch.Generator().manual_seed(0))
    return shrink.sweep(model, ids, n_windows=4, quant_windows=2, window=8, sinks=2, group_size=4, residual_length=4,
                        mla_ranks=(16, 4), log=lambda *_: None)


def test_windows_are_spread_over_the_text_and_the_reference_agrees_with_itself(result):
    assert result["whole_windows"] == 5 and result["window_index"] == [0, 1, 3, 4]
    assert result["quant_window_index"] == [0, 4]
    ref = result["reference"]
    assert math.isclose(math.exp(sum(ref["window_nll"]) / 4), ref["perplexity"], rel_tol=1e-9)


def test_gqa_and_mla_rows(result):
    assert [r["n_kv_head"] for r in result["gqa"]] == [2, 1]
    assert [r["kv_lora_rank"] for r in result["mla"]] == [16, 4]
    exact = result["mla"][0]  # rank C: the same model, up to rounding
    assert exact["top1_agreement"] == 1.0 and abs(exact["paired"]["mean"]) < 1e-5
    for r in result["gqa"] + result["mla"]:
        assert math.isclose(r["paired"]["ratio"], r["perplexity"] / result["reference"]["perplexity"], rel_tol=1e-9)


def test_quantized_rows_are_paired_with_the_fp32_model_on_the_same_windows(result):
    rows = result["quant"]
    assert {(r["nbits"], r["key_quant"], r["residual_length"]) for r in rows} == {
        (b, k, w) for b in (8, 4) for k in ("token", "channel") for w in (0, 4)}
    first, last = result["quant_window_index"]
    fp32 = [result["reference"]["window_nll"][result["window_index"].index(i)] for i in (first, last)]
    for r in rows:
        assert r["window_nll_fp32"] == pytest.approx(fp32, abs=1e-5)  # uncached fp32 = the reference's windows
        assert 0 < r["key_rel_err"] < 1 and 0 < r["value_rel_err"] < 1
    int8 = [r for r in rows if r["nbits"] == 8]
    int4 = [r for r in rows if r["nbits"] == 4]
    assert max(r["logit_err_mean"] for r in int8) < min(r["logit_err_mean"] for r in int4)


def test_window_rows(result):
    w = result["window"]
    assert list(w["rows"]) == ["window 8", "window 6 + 2 sinks"]
    assert all(len(w["per_position_nll"][n]) == 39 for n in ["full", *w["rows"]])
    # Within the window every mask sees the same keys: identical NLL at positions 0..7.
    assert w["per_position_nll"]["window 8"][:8] == pytest.approx(w["per_position_nll"]["full"][:8], abs=1e-6)
    att = result["first_token_attention"]
    assert len(att["weight"]) == 1 and len(att["weight"][0]) == 4 and all(0 < v < 1 for v in att["weight"][0])


def test_paired_difference_is_the_mean_and_standard_error_of_the_per_window_differences():
    ref, other = [1.0, 2.0, 3.0, 4.0], [1.1, 2.3, 2.9, 4.1]
    p = quality.paired_difference(ref, other)
    d = [0.1, 0.3, -0.1, 0.1]
    sd = math.sqrt(sum((v - 0.1) ** 2 for v in d) / 3)
    assert p["mean"] == pytest.approx(0.1) and p["se"] == pytest.approx(sd / 2) and p["worse"] == 3
    assert p["ratio"] == pytest.approx(math.exp(0.1)) and quality.is_noise(p) is (0.1 <= 2 * sd / 2)
    with pytest.raises(ValueError, match="same windows"):
        quality.paired_difference([1.0, 2.0], [1.0])
    assert quality.spread(10, 3) == [0, 4, 9] and quality.spread(3, 5) == [0, 1, 2]
