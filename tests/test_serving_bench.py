"""The serving bench's arithmetic and its small run (no timing asserted: speed is the bench's job)."""
import json

import pytest

import kvlib
from kvlib.measure.bench import serving
from kvlib.measure.bench.serving_figures import write_serving
from kvlib.measure import waste


def test_used_share_by_hand():
    # One request, prompt 3, output 2, max_len 8, blocks of 4: it holds 4 then 5 tokens.
    u = waste.used_share([(3, 2)], max_len=8, block_size=4)
    assert u.contiguous_max == pytest.approx(9 / 16)
    assert u.contiguous_exact == pytest.approx(9 / 10)
    assert u.paged == pytest.approx(9 / (4 + 8))


def test_sampled_lengths_have_the_workload_means_and_fit():
    lengths = waste.sample_lengths("alpaca", 4000, seed=1)
    prompt = sum(p for p, _ in lengths) / len(lengths)
    assert abs(prompt - 19.31) < 1.5 and all(p + o <= 1024 and p >= 1 and o >= 1 for p, o in lengths)
    with pytest.raises(ValueError, match="workload"):
        waste.sample_lengths("lmsys", 3)


def test_small_serving_run_agrees_and_writes_only_where_asked(tmp_path):
    model = kvlib.random_gpt2(kvlib.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=128, vocab_size=97))
    s = serving.ServingSettings(**{**serving.QUICK_SERVING, "hf": False, "num_requests": 5, "repeats": 1})
    result = serving.run_serving(model, s)
    sm = result["summary"]
    assert sm["same_tokens_static"] and sm["same_tokens_alone_first4"] and sm["kvlib_over_hf_generate_batch"] is None
    assert result["continuous"]["mean_rows_per_step"] > result["static"]["batch_size"]
    paths = write_serving(result, tmp_path, quick=True)
    saved = json.loads(paths[0].read_text())
    assert "outputs" not in saved["static"] and saved["summary"]["continuous_over_static"] > 0
    assert all(p.parent == tmp_path for p in paths)
