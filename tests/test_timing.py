"""kvlib.measure.timing and kvlib.measure.bench: well-formed records, the fixed-shape decode, OOM handling, a quick bench run.

No assertion here is about speed: timings depend on the machine and its load; only their form is checked.
"""
import json
import math

import pytest
import torch

import kvlib
from kvlib.measure import bench, compiled, memory, timing


def well_formed(r: timing.Measurement) -> bool:
    return (r.status == "ok" and r.repeats >= 1 and 0 < r.min_s <= r.q1_s <= r.median_s <= r.q3_s <= r.max_s
            and r.tokens_per_s > 0)


def test_summarize_orders_the_statistics():
    r = timing.summarize([3.0, 1.0, 2.0, 10.0], sweep="x", method="dynamic", batch_size=2, context=5, tokens=4,
                         dtype="float32")
    assert (r.min_s, r.median_s, r.max_s, r.repeats) == (1.0, 2.5, 10.0, 4)
    assert r.min_s <= r.q1_s <= r.median_s <= r.q3_s <= r.max_s
    assert r.tokens_per_s == pytest.approx(2 * 4 / 2.5)
    one = timing.summarize([0.5], sweep="x", method="m", batch_size=1, context=1, tokens=1, dtype="float32")
    assert one.q1_s == one.q3_s == one.median_s == 0.5
    with pytest.raises(ValueError, match="at least one sample"):
        timing.summarize([], sweep="x", method="m", batch_size=1, context=1, tokens=1, dtype="float32")


def test_measure_discards_warmup():
    calls = []
    samples = timing.measure(lambda: calls.append(1), "cpu", repeats=4, warmup=2)
    assert len(samples) == 4 and len(calls) == 6 and all(s >= 0 for s in samples)
    with pytest.raises(ValueError, match="repeats"):
        timing.measure(lambda: None, "cpu", repeats=0)


@pytest.mark.parametrize("method", ["dynamic", "static", "uncached", "static-fixed"])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_timed_generations_give_one_record_per_step(tiny_model, method, batch_size):
    ids = timing.random_prompt(tiny_model, batch_size, 5)
    runs = timing.timed_generations(tiny_model, ids, 12, method, repeats=2, warmup=1, progress=False)
    assert len(runs) == 2 and all(len(run) == 12 and min(run) > 0 for run in runs)
    records = timing.step_records(tiny_model, runs, method, ids)
    assert [r.sweep for r in records] == ["prefill"] + ["per_token"] * 11
    assert [r.context for r in records] == [5] + list(range(6, 17))  # T_total of each decode step
    assert all(well_formed(r) and r.batch_size == batch_size for r in records)
    assert math.isnan(records[1].bytes_per_step) == (method == "uncached")
    totals = timing.length_records(tiny_model, runs, method, ids, [1, 4, 12, 50])
    assert [r.tokens for r in totals] == [1, 4, 12]  # 50 is longer than the runs: skipped
    assert [r.median_s for r in totals] == sorted(r.median_s for r in totals)  # sums of positive steps grow


def test_fixed_shape_step_reads_the_whole_buffer(tiny_model):
    ids = timing.random_prompt(tiny_model, 1, 4)
    runs = timing.timed_generations(tiny_model, ids, 6, "static-fixed", repeats=1, warmup=0, progress=False)
    records = timing.step_records(tiny_model, runs, "static-fixed", ids)
    # trap 4: every step reads all 9 slots, however few are filled
    assert {r.bytes_per_step for r in records[1:]} == {timing.bytes_per_decode_step(tiny_model, 9)}


def test_uncached_forward_and_estimated_totals(tiny_model):
    records = timing.time_uncached_forward(tiny_model, [1, 8, 32], repeats=2, warmup=0, progress=False)
    assert [r.context for r in records] == [1, 8, 32] and all(well_formed(r) for r in records)
    # Totals of a known profile: a forward over t tokens takes t ms, so N tokens from a 4-token prompt take
    # sum(4..4+N-1) ms.
    fake = [timing.Measurement(sweep="per_token", method="uncached", batch_size=1, context=t, tokens=1,
                               dtype="float32", median_s=t / 1e3, min_s=t / 1e3, max_s=t / 1e3, q1_s=t / 1e3,
                               q3_s=t / 1e3, repeats=1) for t in (1, 10, 100)]
    est = timing.estimate_uncached_totals(fake, [1, 10, 97, 98], prompt_len=4)
    assert [r.tokens for r in est] == [1, 10, 97]  # 98 tokens would need a forward over 101 > 100 sampled
    assert [round(r.median_s * 1e3, 6) for r in est] == [4, sum(range(4, 14)), sum(range(4, 101))]
    assert {r.status for r in est} == {"estimated"}


def test_context_grid():
    grid = timing.context_grid(1024, 12)
    assert grid[0] == 1 and grid[-1] == 1024 and grid == sorted(set(grid)) and 10 <= len(grid) <= 13
    assert timing.context_grid(50, 4, start=8) == [8, 15, 27, 50]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_fixed_shape_decode_gives_generate_tokens(tiny_model, batch_size):
    ids = timing.random_prompt(tiny_model, batch_size, 7, seed=3)
    expected = kvlib.generate(tiny_model, ids, 25)
    cache = compiled.FixedShapeKVCache(tiny_model.config, batch_size, 40, dtype=torch.float32, device="cpu")
    assert torch.equal(compiled.generate_fixed_shape(tiny_model, ids, 25, cache=cache), expected)
    # The same buffers again, stale values and all: slots past each position are masked, never read.
    assert torch.equal(compiled.generate_fixed_shape(tiny_model, ids, 25, cache=cache), expected)


def test_compiled_fixed_shape_decode_gives_generate_tokens(tiny_model):
    """fullgraph=True: the step traces as one graph (no graph break, no position-dependent Python int), and
    aot_eager runs it through AOTAutograd's functionalization of the in-place cache writes. Inductor's code
    generation is left to the GPU benchmark: it takes over half a minute even for this tiny model here."""
    torch._dynamo.reset()
    step = compiled.compile_decode_step(mode=None, backend="aot_eager")
    ids = timing.random_prompt(tiny_model, 2, 5, seed=4)
    assert torch.equal(compiled.generate_fixed_shape(tiny_model, ids, 20, step=step), kvlib.generate(tiny_model, ids, 20))
    # The compiled step reads the LM head's (C, V) copy that the eager prefill refreshes: new weights, new tokens.
    with torch.no_grad():
        tiny_model.transformer.wte.weight.mul_(-1.5)  # tied: the LM head changes too
    assert torch.equal(compiled.generate_fixed_shape(tiny_model, ids, 20, step=step), kvlib.generate(tiny_model, ids, 20))


def test_compiled_step_is_right_before_any_eager_forward(tiny_model):
    """Compiled cold, the LM head has no (C, V) copy yet and falls back to F.linear; after an eager forward, the
    recompiled step reads the copy. Same logits either way."""
    torch._dynamo.reset()
    step = compiled.compile_decode_step(mode=None, backend="aot_eager")
    cache = compiled.FixedShapeKVCache(tiny_model.config, 1, 8, dtype=torch.float32, device="cpu")
    args = (torch.tensor([3]), torch.tensor([0]), cache)
    with torch.inference_mode():
        cold = step(tiny_model, *args)
        assert tiny_model.lm_head._weight_t is None
        eager = compiled.fixed_shape_decode_step(tiny_model, *args)
        assert tiny_model.lm_head._weight_t is not None
        warm = step(tiny_model, *args)
    torch.testing.assert_close(cold, eager)
    assert torch.equal(warm, eager)  # the same (C, V) product as eager


def test_out_of_memory_is_recorded_and_the_sweep_goes_on(tiny_model, monkeypatch):
    forward = tiny_model.forward

    def forward_that_runs_out_of_memory(input_ids, *args, **kwargs):
        if input_ids.shape[0] >= 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return forward(input_ids, *args, **kwargs)

    monkeypatch.setattr(tiny_model, "forward", forward_that_runs_out_of_memory)
    records = timing.batch_size_sweep(tiny_model, [4, 1, 8, 2], new_tokens=3, prompt_len=4, repeats=1, warmup=0,
                                      progress=False)
    status = {(r.batch_size, r.method): r.status for r in records}
    assert status == {(b, m): "oom" if b >= 4 else "ok" for b in (4, 1, 8, 2) for m in ("dynamic", "static")}
    assert all(math.isnan(r.median_s) for r in records if r.status == "oom")
    assert all(well_formed(r) for r in records if r.status == "ok")


def test_bytes_and_peaks(tiny_model):
    assert memory.bytes_per_token_for_config(kvlib.GPT2Config(), torch.float32) == 73_728  # GPT-2 small, REFERENCES
    assert memory.bytes_per_token_for_config(kvlib.GPT2Config(), torch.bfloat16) == 36_864
    params = sum(p.numel() for p in tiny_model.parameters())  # the tied LM head counted once
    assert timing.weight_bytes(tiny_model) == 4 * (params - tiny_model.transformer.wpe.weight.numel())
    c = tiny_model.config
    kv = 2 * 10 * (2 * c.n_layer * c.n_embd * 4)  # 2 rows × 10 tokens × (K and V, every layer, fp32)
    assert timing.bytes_per_decode_step(tiny_model, 10, 2) == timing.weight_bytes(tiny_model) + kv
    assert timing.peak_bandwidth_gbps("NVIDIA H100 80GB HBM3") == 3350
    assert timing.peak_bandwidth_gbps("NVIDIA H100 PCIe") == 2000
    assert timing.peak_bandwidth_gbps("NVIDIA H200") == 4800
    assert timing.peak_bandwidth_gbps("NVIDIA A100-SXM4-80GB") == 2039
    assert timing.peak_bandwidth_gbps("Some Future Accelerator") is None


@pytest.mark.parametrize("name, slug", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA A100-SXM4-40GB", "a100"),
                                        ("NVIDIA GeForce RTX 4090", "rtx4090"), ("Tesla T4", "t4")])
def test_device_slug(monkeypatch, name, slug):
    assert bench.device_slug("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert bench.device_slug("cuda") == slug


def test_decode_step_op_count(tiny_model):
    ops = timing.count_decode_ops(tiny_model)
    assert ops.count("addmm") == 4 * tiny_model.config.n_layer  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    assert ops.count("layer_norm") == 2 * tiny_model.config.n_layer + 1


def test_weight_streaming_floor(tiny_model):
    r = bench.weight_streaming_floor(tiny_model, repeats=3, warmup=1)
    c = tiny_model.config
    assert well_formed(r) and r.sweep == "floor"
    assert r.bytes_per_step == 4 * (c.n_layer * 12 * c.n_embd**2 + c.vocab_size * c.n_embd)  # 12C² per block


def test_weight_pass_with_an_op_between_products_runs_one_gelu_per_matrix(tiny_model):
    plain, nbytes = bench.weight_pass(tiny_model)
    with_gelu, same_bytes = bench.weight_pass(tiny_model, op_between=True)
    counts = []
    for one_pass in (plain, with_gelu):
        with torch.profiler.profile() as prof:
            one_pass()
        counts.append(sum(e.count for e in prof.key_averages() if e.key == "aten::gelu"))
    assert counts == [0, 4 * tiny_model.config.n_layer] and nbytes == same_bytes


def test_argument_errors(tiny_model):
    ids = timing.random_prompt(tiny_model, 1, 4)
    with pytest.raises(ValueError, match="method must be one of"):
        timing.timed_generations(tiny_model, ids, 3, "paged", progress=False)
    with pytest.raises(ValueError, match="compiled_step"):
        timing.timed_generations(tiny_model, ids, 3, "static-compiled", progress=False)
    with pytest.raises(ValueError, match="n_positions"):
        timing.timed_generations(tiny_model, ids, 300, "dynamic", progress=False)
    with pytest.raises(ValueError, match="sampled"):
        timing.per_token_latency_sweep(tiny_model, methods=("uncached",), progress=False)
    with pytest.raises(ValueError, match="slots"):
        cache = compiled.FixedShapeKVCache(tiny_model.config, 1, 5, dtype=torch.float32, device="cpu")
        compiled.generate_fixed_shape(tiny_model, ids, 8, cache=cache)


def meta_date_is_iso(text: str) -> bool:
    import datetime

    return datetime.date.fromisoformat(text).year >= 2024


def test_the_linear_head_option_drops_the_transposed_copy(tiny_model):
    ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        with_copy = tiny_model(ids)
        assert tiny_model.lm_head.copy_nbytes == tiny_model.lm_head.weight.numel() * 4
        tiny_model.lm_head.transposed_copy = False
        without = tiny_model(ids)
    tiny_model.lm_head.transposed_copy = True
    torch.testing.assert_close(without, with_copy)  # the same logits, computed as F.linear on the tied weight


def test_batch_sweep_takes_turns_between_methods(tiny_model, monkeypatch):
    order = []
    timed = timing.sweeps.timed_generations

    def spy(model, ids, n, method, **kwargs):
        order.append((method, kwargs["repeats"], kwargs["warmup"]))
        return timed(model, ids, n, method, **kwargs)

    monkeypatch.setattr(timing.sweeps, "timed_generations", spy)
    timing.batch_size_sweep(tiny_model, [1], new_tokens=2, prompt_len=2, repeats=2, warmup=1, progress=False)
    assert order == [("dynamic", 1, 1), ("static", 1, 1), ("dynamic", 1, 0), ("static", 1, 0)]


def test_quick_bench_runs_end_to_end(tmp_path, capsys):
    result = bench.main(["--quick", "--model", "tiny", "--out", str(tmp_path), "--no-progress", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "transformers cached" in out and "weight-streaming floor" in out
    summary = result["meta"]["summary"]
    assert all(summary["same_tokens"].values())  # kvlib (all caches) and transformers agree token for token
    assert set(summary["tokens_per_s"]) == {"dynamic", "static", "uncached", "hf-cached", "hf-uncached", "weight-floor",
                                            "dynamic-linear-head", "weight-floor-linear-head"}
    assert summary["same_tokens"]["dynamic-linear-head"] and summary["transposed_copy_speedup"] > 0
    assert meta_date_is_iso(result["meta"]["date"])
    config = result["meta"]["config"]
    assert result["meta"]["lm_head_copy_bytes"] == config["vocab_size"] * config["n_embd"] * 4  # fp32 (V, C) copy
    assert summary["kvlib_cached_over_uncached"] > 0 and "uncached_over_dynamic_at_128" in summary
    stem = "cpu_L2_quick"
    meta, records = bench.load_results(tmp_path / f"timing_{stem}.json")
    assert meta["device_slug"] == "cpu" and meta["device"].startswith("CPU")
    assert json.loads((tmp_path / f"timing_{stem}.json").read_text())["settings"]["context_len"] == 128
    assert len(records) == len(result["records"])
    sweeps = {r["sweep"] for r in records}
    assert sweeps == {"headline", "floor", "floor-gap", "per_token", "prefill", "length", "batch"}
    assert meta["config"]["attn_implementation"] == "sdpa"  # the bench times kvlib's fast path by default
    assert set(summary["gelu_gap_ms"]) == {"median", "q1", "q3"} and summary["gelu_alone_us"] > 0
    assert "one GELU after each of the 8 block products adds" in out
    for name in ("headline", "per_token", "vs_length", "batch"):
        assert (tmp_path / f"timing_{name}_{stem}.png").stat().st_size > 10_000


def test_gpu_bench_pipeline_runs_on_cpu(tiny_model, tmp_path, monkeypatch):
    """What `--device cuda` adds (the compiled step in the headline and sweeps, the dtype sweep and its figure),
    run end to end on CPU with aot_eager standing in for inductor: no GPU session here has exercised it."""
    torch._dynamo.reset()
    modes, compile_decode_step = [], compiled.compile_decode_step

    def compile_step(mode):
        modes.append(mode)
        return compile_decode_step(mode=None, backend="aot_eager")

    monkeypatch.setattr(compiled, "compile_decode_step", compile_step)
    monkeypatch.setattr(timing.sweeps, "compile_decode_step", compile_step)
    s = bench.Settings(**{**bench.QUICK, "repeats": 1, "warmup": 0, "dtypes": ("float32", "float64")})
    result = bench.run(tiny_model, s, sweeps=True, compile_mode="reduce-overhead", progress=False)
    assert modes == ["reduce-overhead"] * 3  # the headline's step, then one per dtype
    summary = result["meta"]["summary"]
    assert summary["same_tokens"]["static-compiled"] and "static-compiled" in summary["kvlib_percent_of_floor"]
    assert "compile_and_warmup_s" in summary and "static-compiled" in bench.report(result)
    assert summary["compiled_over_hf_cached"] > 0 and "compiled >= 5x hf cached" in summary["targets"]
    assert set(summary["uncached_crossover_context"]) == {"dynamic", "static", "static-compiled"}
    dtype_rows = {(r.dtype, r.method) for r in result["records"] if r.sweep == "dtype"}
    assert dtype_rows == {(d, m) for d in ("float32", "float64") for m in ("dynamic", "static", "static-compiled")}
    paths = bench.write_results(result, tmp_path)
    assert {p.name for p in paths} >= {f"timing_{n}_cpu_L2.png" for n in ("headline", "per_token", "dtype")}


def test_matching_prefix():
    a = torch.tensor([1, 2, 3, 4])
    assert bench.runner.matching_prefix(a, a) == 4
    assert bench.runner.matching_prefix(a, torch.tensor([1, 2, 9, 4])) == 2
    assert bench.runner.matching_prefix(a, torch.tensor([7, 2, 3, 4])) == 0
    assert bench.runner.matching_prefix(a, a[:3]) == 3


def _step(method, context, ms):
    return timing.Measurement(sweep="per_token", method=method, batch_size=1, context=context, tokens=1,
                              dtype="float16", median_s=ms / 1e3)


@pytest.mark.parametrize("uncached_ms, expected", [
    ((1.0, 1.0, 2.0, 3.0), 64),  # equal at 4 and 16 (not slower), slower from 64 on
    ((0.5, 2.0, 0.9, 3.0), 256),  # slower at 16, faster again at 64: the crossover is where it stays slower
    ((0.5, 0.5, 0.5, 0.5), None),  # never slower
    ((2.0, 2.0, 2.0, 2.0), None),  # slower everywhere sampled: the curves do not cross there
])
def test_uncached_crossover(uncached_ms, expected):
    contexts = (4, 16, 64, 256)
    per = {("dynamic", c): _step("dynamic", c, 1.0) for c in contexts}
    per.update({("uncached", c): _step("uncached", c, t) for c, t in zip(contexts, uncached_ms)})
    per[("uncached", 2)] = _step("uncached", 2, 9.0)  # no cached step at 2: not compared
    assert bench.runner.uncached_crossover(per, "dynamic") == expected


def test_copy_bandwidth_and_launch_overhead_are_measured():
    assert timing.measure_copy_bandwidth("cpu", 16 * 2**20, repeats=2) > 0.1  # GB/s: any real machine beats this
    assert 0 < timing.measure_launch_overhead_us("cpu", launches=200, repeats=2) < 1e4
    assert timing.measure_matmul_gflops("cpu", n=256, repeats=2) > 0.1  # GFLOP/s


def test_bench_in_bfloat16_names_its_dtype(tmp_path, capsys):
    result = bench.main(["--quick", "--model", "tiny", "--dtype", "bfloat16", "--out", str(tmp_path), "--no-progress",
                         "--repeats", "1", "--headline-only"])
    meta = result["meta"]
    assert meta["dtype"] == "bfloat16" and "bfloat16, batch 1" in capsys.readouterr().out
    assert {r.dtype for r in result["records"]} == {"bfloat16"}
    assert {r.sweep for r in result["records"]} == {"headline", "floor", "floor-gap"}  # --headline-only: no sweeps
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"timing_{n}" for n in (
        "cpu_L2_bfloat16_quick.csv", "cpu_L2_bfloat16_quick.json", "headline_cpu_L2_bfloat16_quick.png")]
    assert meta["launch_overhead_us"] > 0 and meta["copy_bandwidth_gbps"] > 0 and meta["matmul_gflops"] > 0
    launch_floor_ms = meta["ops_per_decode_step"] * meta["launch_overhead_us"] / 1e3
    assert meta["summary"]["launch_floor_ms"] == pytest.approx(launch_floor_ms)


def test_op_between_gap_is_a_paired_difference_per_pass(tiny_model):
    r = bench.runner.op_between_gap(tiny_model, pairs=3, passes=2)
    assert (r.sweep, r.method, r.repeats) == ("floor-gap", "gelu-minus-floor", 3)
    assert r.min_s <= r.q1_s <= r.median_s <= r.q3_s <= r.max_s
    assert bench.runner.gelu_alone_us(tiny_model, calls=50) > 0
