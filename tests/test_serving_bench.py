"""The serving bench's pieces on a tiny model: the arithmetic, the engines behind serve(), the statistics, the
profile's buckets, the vLLM plumbing, and a whole small part. No timing is asserted (speed is the bench's job);
the vLLM comparison runs only where a vLLM venv is named (KVLIB_VLLM_VENV), and says why it skips otherwise."""
import json
import math
import os

import pytest
import torch

import kvlib
from kvlib.measure import waste
from kvlib.measure.bench import (serving, serving_attention, serving_chunked, serving_decode, serving_figures,
                                  serving_profile, serving_report, serving_stats, vllm_env, vllm_peer)
from kvlib.measure.bench.engine_driver import serve
from kvlib.measure.bench.serving_engines import KvlibEngine, StaticBatcher
from kvlib.measure.bench.serving_figures import write_serving_figures
from kvlib.measure.bench.serving_runs import poisson_arrivals

CONFIG = kvlib.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=97)
MODEL = kvlib.random_gpt2(CONFIG, seed=1)
G = torch.Generator().manual_seed(0)
LENGTHS = [(5, 7), (12, 3), (2, 11), (9, 5), (7, 9)]  # (prompt, output) per request
REQUESTS = [(torch.randint(0, 97, (p,), generator=G).tolist(), o) for p, o in LENGTHS]


def alone(requests):
    return [kvlib.generate(MODEL, torch.tensor([p]), o)[0, len(p):].tolist() for p, o in requests]


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


@pytest.mark.parametrize("make", [lambda: KvlibEngine(MODEL, 12, 4, max_num_seqs=8, max_num_batched_tokens=16),
                                  lambda: StaticBatcher(MODEL, 48, "exact"), lambda: StaticBatcher(MODEL, 128, "max")],
                         ids=["kvlib", "static_exact", "static_max"])
def test_every_engine_gives_each_request_its_tokens_alone_and_a_time_per_token(make):
    engine = make()
    served = serve(engine, REQUESTS)
    assert served["tokens"] == alone(REQUESTS)
    for (_, o), times in zip(REQUESTS, served["token_times"]):
        assert len(times) == o and times == sorted(times) and times[0] > 0
    assert len(served["step_end"]) == engine.counters()["steps"] and served["elapsed_s"] == served["step_end"][-1]


def test_static_batches_reserve_what_they_say_and_keep_finished_rows():
    exact = StaticBatcher(MODEL, 48, "exact")
    serve(exact, REQUESTS)
    # in arrival order: 2 x (12 + 7) = 38 slots fit 48; adding (2, 11) would need 3 x (12 + 11) = 69: 2 rows
    c = exact.counters()
    assert c["rows"][0] == 2 and sum(c["useful_rows"]) == sum(o for _, o in REQUESTS) < sum(c["rows"])
    orca = StaticBatcher(MODEL, 128, "max")  # 128 // n_positions = 2 rows per batch, whatever their lengths
    serve(orca, REQUESTS)
    assert max(orca.counters()["rows"]) == 2 and orca.counters()["steps"] == 7 + 11 + 9  # the longest of each batch
    with pytest.raises(ValueError, match="KV budget"):
        StaticBatcher(MODEL, 10, "exact").add(0, [1] * 8, 4)
    with pytest.raises(ValueError, match="reservation"):
        StaticBatcher(MODEL, 10, "oracle")


def test_continuous_batching_refills_from_a_queue_and_takes_fewer_steps():
    engine = KvlibEngine(MODEL, 8, 4, max_num_seqs=8, max_num_batched_tokens=16)  # 32 slots: not all fit at once
    t = serving_stats.throughput(serve(engine, REQUESTS))
    static = StaticBatcher(MODEL, 32, "exact")
    s = serving_stats.throughput(serve(static, REQUESTS))
    assert t["refilled_requests"] > 0 and t["steps"] < s["steps"]


def test_arrivals_are_respected_and_checked():
    served = serve(KvlibEngine(MODEL, 12, 4), REQUESTS[:2], arrivals=[0.0, 0.05])
    assert served["token_times"][1][0] >= 0.05
    with pytest.raises(ValueError, match="arrivals"):
        serve(KvlibEngine(MODEL, 12, 4), REQUESTS[:2], arrivals=[0.1, 0.0])


def test_poisson_arrivals_scale_one_pattern():
    a, b = poisson_arrivals(2000, 2.0, seed=3), poisson_arrivals(2000, 4.0, seed=3)
    assert a[0] == 0 and a == sorted(a) and all(math.isclose(x, 2 * y) for x, y in zip(a, b))
    assert abs(a[-1] / 1999 - 0.5) < 0.05  # mean gap 1 / rate
    with pytest.raises(ValueError, match="rate"):
        poisson_arrivals(3, 0)


def test_latency_statistics_by_hand():
    served = dict(arrivals=[0.0, 1.0], token_times=[[0.5, 1.0, 1.5], [3.0]], tokens=[[1, 2, 3], [4]],
                  step_end=[0.5, 1.0, 1.5, 3.0], elapsed_s=3.0)
    lat = serving_stats.latency(served)
    assert lat["ttft_p50_s"] == pytest.approx(1.25) and lat["ttft_p99_s"] == pytest.approx(0.5 + 1.5 * 0.99)
    assert lat["tpot_p50_s"] == pytest.approx(0.5) and lat["normalized_latency_s"] == pytest.approx((0.5 + 2) / 2)
    t = serving_stats.throughput(served)
    assert t["tokens_per_s"] == pytest.approx(4 / 3) and t["ms_per_step"] == pytest.approx(750)
    assert t["refilled_requests"] == 1  # request 1 started after request 0 finished
    assert serving_stats.percentile([3, 1, 2], 50) == 2 and serving_stats.percentile([1, 2], 99) == pytest.approx(1.99)


def test_decomposition_multiplies_out():
    fast, slow = dict(steps=100, ms_per_step=50.0), dict(steps=300, ms_per_step=40.0)
    d = serving_stats.decompose(fast, slow)
    assert d["fewer_steps"] == 3 and d["per_step_time"] == pytest.approx(0.8) and d["speedup"] == pytest.approx(2.4)


def test_engine_ratios_pair_repeat_with_repeat():
    """One slow repeat of one engine moves the ratio of medians (2.0 here), not the median of paired ratios."""
    engines = {"a": {"tokens_per_s": {"values": [10.0, 20.0, 30.0]}},
               "b": {"tokens_per_s": {"values": [10.0, 10.0, 40.0]}}}
    assert serving_report.ratio(engines, "a", "b") == dict(median=1.0, min=0.75, max=2.0)
    assert serving_report.ratio(engines, "a", "c") is None


def test_token_comparison_reports_a_difference_with_its_logit_gap():
    ours = alone(REQUESTS[:2])
    theirs = [list(ours[0]), ours[1][:1] + [(ours[1][1] + 1) % 97] + ours[1][2:]]
    c = serving_stats.compare_tokens(MODEL, REQUESTS[:2], ours, theirs)
    assert c["identical"] == 1 and len(c["differences"]) == 1
    d = c["differences"][0]
    assert d["request"] == 1 and d["position"] == 1 and d["gap"] > 0 and d["top2_gap"] > 0  # ours is the argmax
    assert serving_stats.first_difference([1, 2], [1, 2, 3]) == 2 and serving_stats.first_difference([1], [1]) is None


def test_profile_buckets_and_their_arithmetic():
    assert serving_profile.bucket("aten::addmm") == "matrix products"
    assert serving_profile.bucket("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert serving_profile.bucket("aten::index_copy_") == "index ops (K/V gathers, slot writes)"
    assert serving_profile.bucket("mkldnn::_linear_pointwise") == "matrix products"
    assert serving_profile.bucket("## Call CompiledFxGraph abc ##") == "compiled regions"
    assert serving_profile.bucket("aten::layer_norm") == "other ops"
    prof = dict(wall_s=1.0, regions={"kvlib::step": 1000.0, "kvlib::forward": 800.0},
                ops={"kvlib::forward/aten::addmm": [4, 500.0], "kvlib::forward/aten::index": [2, 100.0],
                     "kvlib::step/aten::argmax": [1, 50.0], "aten::addmm": [4, 500.0]})
    s = serving_profile.summarize(prof, steps=2, padded_share=0.5)
    b = s["buckets_ms"]
    assert s["step_ms"] == pytest.approx(0.5) and b["matrix products"] == pytest.approx(0.25)
    assert b["Python and dispatch in the forward"] == pytest.approx(0.1)
    assert b["scheduling and Python outside the forward"] == pytest.approx(0.075)
    assert sum(b.values()) == pytest.approx(s["step_ms"]) and s["padding_ms_estimate"] == pytest.approx(0.125)


def test_the_kvlib_profile_accounts_for_every_step():
    engine = KvlibEngine(MODEL, 12, 4, max_num_batched_tokens=16)
    p = serving_profile.profile_kvlib(engine, REQUESTS)
    assert p["steps"] == engine.counters()["steps"] and p["buckets_ms"]["matrix products"] > 0
    assert sum(p["buckets_ms"].values()) == pytest.approx(p["step_ms"], rel=1e-6)


def test_vllm_requirements_leave_out_what_a_text_model_does_not_need():
    lines = ["regex", "torch==2.13.0+cpu", "torchvision; platform_machine != 'riscv64'", "xgrammar==0.2.8; "
             "platform_machine == 'x86_64'", "pytest; extra == 'test'", "mistral_common[image]>=1.11.6"]
    assert vllm_env.requirements(lines) == ["regex", "xgrammar==0.2.8; platform_machine == 'x86_64'",
                                            "mistral_common[image]>=1.11.6"]


def test_a_missing_vllm_venv_is_named_with_the_way_to_build_one(tmp_path, monkeypatch):
    monkeypatch.delenv(vllm_peer.VENV_ENV, raising=False)
    python, why = vllm_peer.find_vllm(None)
    assert python is None and "vllm_env" in why
    python, why = vllm_peer.find_vllm(tmp_path / "nowhere")
    assert python is None and "does not exist" in why


def test_a_small_part_without_vllm_writes_only_where_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(vllm_peer.VENV_ENV, raising=False)
    s = serving.ServingSettings(workloads={"alpaca": 4}, budget_reservations={"alpaca": 1}, repeats=1, hf=False,
                                max_output=6, rates=(50.0, 100.0), online_requests=3, saturated_s=0.0)
    tiny = kvlib.random_gpt2(kvlib.GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=97))
    data = {}
    for part in ("alpaca", "online"):
        data = serving.merge(data, part, serving.run_part(part, tiny, s, None, 1, log=lambda *a: None), tiny, s)
    data["summary"] = serving_report.summary(data)
    e = data["offline"]["alpaca"]["engines"]
    assert set(e) == {"kvlib", "kvlib_compiled", "static_exact", "static_max"}
    assert "absent" in data["meta"]["parts"]["alpaca"]["vllm"]
    assert data["summary"]["alpaca"]["identical_requests"] == {"kvlib_compiled": "4/4", "static_exact": "4/4",
                                                               "static_max": "4/4"}
    # every engine is past a cut-off of 0 s/token after its first rate, so none runs at the second
    assert set(data["online"]["engines"]) == {"kvlib", "kvlib_compiled", "static_exact"}
    assert all([r["rate"] for r in rows] == [50.0] for rows in data["online"]["engines"].values())
    assert "kvlib LLMEngine" in serving_report.report(data)
    json.dumps(data)  # what --out writes
    paths = write_serving_figures(data, tmp_path)
    assert sorted(p.name for p in paths) == ["07_serving_latency.png", "07_serving_steps.png",
                                             "07_serving_throughput.png"]


def test_vllm_gives_kvlibs_greedy_tokens():
    python, why = vllm_peer.find_vllm(None)
    if python is None:
        pytest.skip(f"vLLM comparison not run: {why}")
    model = kvlib.random_gpt2(kvlib.GPT2Config(**serving.TINY_SERVING))
    requests = serving.make_requests("alpaca", 6, model.config, seed=0, max_output=12)
    with serving.vllm_peers(model, 512, serving.ServingSettings(), None, ("vllm_eager",), 2, log=lambda *a: None) \
            as (peers, info):
        theirs = peers["vllm_eager"].serve(requests)["tokens"]
    ours = [kvlib.generate(model, torch.tensor([p]), o)[0, len(p):].tolist() for p, o in requests]
    c = serving_stats.compare_tokens(model, requests, ours, theirs)
    assert c["identical"] == len(requests) or all(abs(d.get("gap", 1)) < 1e-3 for d in c["differences"]), c


def test_the_committed_results_hold_together():
    """figures/serving_cpu.json was made with vLLM, which the tests never need: what they can check is that its
    headline summary recomputes from its runs and that every engine gave kvlib's tokens on every request."""
    from kvlib.measure.figures import FIGURES_DIR

    data = serving_figures.load_serving(FIGURES_DIR / "serving_cpu.json")
    assert serving_report.summary(data) == data["summary"]
    for workload, r in data["offline"].items():
        n = len(r["request_lengths"])
        assert {name: c["identical"] for name, c in r["same_tokens_as_kvlib"].items()} == \
            {name: n for name in r["engines"] if name != "kvlib"}, workload
    assert set(data["meta"]["parts"]) == set(serving.PARTS) and "vLLM (default)" in serving_report.report(data)
    a = data["attention"]
    assert all(max(p["max_abs_diff"].values()) <= a["agree_within"] for p in a["points"])
    assert all(p["max_abs_diff"]["vllm"] <= a["agree_within"] for p in a.get("vllm", {}).get("points", []))
    assert data["chunked"]["same_tokens"] and all(x["max_rel_diff"] <= data["products"]["agree_within"]
                                                  for x in data["products"]["points"])
    assert all(p["same_tokens"] == {"vllm_default": p["rows"]} for p in data["decode"]["points"])


def test_the_parts_that_measure_kvlib_alone_run_small_and_check_what_they_time(tmp_path, monkeypatch):
    """--part attention, chunked and products on a tiny model: structure and agreement, never speed."""
    monkeypatch.delenv(vllm_peer.VENV_ENV, raising=False)
    case = dict(decoders=3, prompt=5, output=12, long_prompt=30, long_output=3, arrive_after=4, budgets=(13, 40))
    s = serving.ServingSettings(block_size=4, repeats=1, attention_rows=3, attention_contexts=(3, 17),
                                kernel_repeats=1, product_rows=(1, 3), chunked_case=case)
    data = {}
    for part in serving.KERNEL_PARTS:
        data = serving.merge(data, part, serving.run_part(part, MODEL, s, None, 1, log=lambda *a: None), MODEL, s)
    a = data["attention"]
    assert [p["context"] for p in a["points"]] == [3, 17] and a["n_head"] == 2 and a["head_dim"] == 16
    assert all(max(p["max_abs_diff"].values()) <= a["agree_within"] for p in a["points"])
    assert all(set(p["ms"]) == {"gather", "blockwise", "contiguous", "decode_work"} for p in a["points"])
    c = data["chunked"]
    assert c["same_tokens"] and set(c["summary"]) == {"chunked", "whole"}
    # 30 prompt tokens, 13 a step of which 3 go to the decode rows: 3 steps of 10; the whole budget: one step
    assert [r["window_steps"] for r in (c["runs"]["chunked"][0], c["runs"]["whole"][0])] == [3, 1]
    p = data["products"]
    assert p["products"] == 2 * 4 + 1 and [x["rows"] for x in p["points"]] == [1, 3]
    assert all(x["max_rel_diff"] <= p["agree_within"] for x in p["points"])
    assert all(set(x["ms"]) == {"plain", "prepacked", "onednn"} for x in p["points"])
    parts = data["meta"]["parts"]
    assert all(parts[p]["vllm"] == {"absent": "not used by this part"} for p in ("chunked", "products"))
    assert "no vLLM environment named" in parts["attention"]["vllm"]["absent"] and "vllm" not in a
    text = serving_report.report(data)
    assert "block-wise slower than the gather" in text and "longest decode gap" in text and "prepacked" in text
    json.dumps(data)
    paths = write_serving_figures(data, tmp_path)
    assert sorted(p.name for p in paths) == ["07_attention_vs_context.png", "07_chunked_prefill.png",
                                             "07_serving_products.png"]
    # vLLM's side, as run_attention_in_vllm returns it (its op's timings stand in here: block-wise's, halved)
    vllm_side = json.loads(json.dumps(a))
    for p in vllm_side["points"]:
        p["ms"] = {"blockwise": p["ms"]["blockwise"], "vllm": {k: v / 2 for k, v in p["ms"]["blockwise"].items()
                                                               if k != "samples"},
                   "vllm_metadata": p["ms"]["decode_work"]}
        p["max_abs_diff"], p["vllm_isa"] = {"vllm": 1e-7}, "vec"
    data["attention"]["vllm"] = vllm_side
    lines = serving_attention.attention_lines(data)
    assert any(line.startswith("vLLM's CPU attention op (ISA vec)") for line in lines)
    assert serving_attention.blockwise_over_vllm(data["attention"]) == pytest.approx({3: 2.0, 17: 2.0})
    serving_attention.attention_figure(data, "test")
    data["meta"]["parts"]["attention"]["vllm"] = {"vllm": "0.0", "op": "attention op"}
    assert "vLLM 0.0's attention op" in serving_report.report(data)


def test_the_attention_part_without_vllm_says_why():
    s = serving.ServingSettings(block_size=4, repeats=1, attention_rows=2, attention_contexts=(5,), kernel_repeats=1)
    r = serving.run_part("attention", MODEL, s, "/nonexistent-venv", 1, log=lambda *a: None)
    assert "does not exist" in r["meta"]["vllm"]["absent"] and "vllm" not in r


def test_the_chunked_case_is_checked():
    case = dict(serving_chunked.CASE)
    with pytest.raises(ValueError, match="positions"):
        serving_chunked.check_case(case, 256)
    with pytest.raises(ValueError, match="budgets"):
        serving_chunked.check_case(dict(case, budgets=(128, 512)), 1024)
    with pytest.raises(ValueError, match="keys"):
        serving_chunked.check_case(dict(case, extra=1), 1024)


def test_the_decode_part_times_only_steps_where_every_request_decodes(tmp_path):
    """--part decode on a tiny model without vLLM: kvlib's compiled engine alone, structure and step selection."""
    case = dict(rows=(2, 3), prompts=(5, 30), new_tokens=6)
    s = serving.ServingSettings(block_size=4, repeats=1, decode_case=case)
    data = serving.merge({}, "decode", serving.run_part("decode", MODEL, s, None, 1, log=lambda *a: None), MODEL, s)
    d = data["decode"]
    assert [(p["rows"], p["prompt"]) for p in d["points"]] == [(2, 5), (2, 30), (3, 5), (3, 30)]
    assert all(set(p["ms"]) == {"kvlib_compiled"} and p["same_tokens"] == {} for p in d["points"])
    assert d["budget_tokens"] == 3 * 9 * 4 and "absent" in data["meta"]["parts"]["decode"]["vllm"]
    assert set(d["summary"]) == {"2", "3"} and "kvlib_over_vllm" not in d["summary"]["2"]
    assert "decode step against context" in serving_report.report(data)
    assert [p.name for p in write_serving_figures(data, tmp_path)] == ["07_serving_decode.png"]
    # steps: prefill, then every request decodes; the first decode step is left out, the rest are timed
    served = dict(step_end=[1.0, 1.5, 1.6, 1.8, 1.9], step_rows=[0, 2, 2, 2, 1])
    assert serving_decode.decode_step_ms(served, 2) == pytest.approx(150.0)
    with pytest.raises(RuntimeError, match="no step"):
        serving_decode.decode_step_ms(dict(step_end=[1.0], step_rows=[1]), 2)
    with pytest.raises(ValueError, match="positions"):
        serving_decode.check_case(dict(case, prompts=(5, 300)), 256)
    with pytest.raises(ValueError, match="keys"):
        serving_decode.check_case(dict(case, extra=1), 256)
