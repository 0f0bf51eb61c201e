"""What one `python -m kvlib.measure.bench` run measures: the headline generations taking turns, the weight-streaming floor,
the sweeps, and the summary numbers (see the package docstring)."""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, fields

import torch
from tqdm import tqdm

from .. import compiled, timing
from ...model.generation import generate, make_cache
from ...model.gpt2 import GPT2
from ..figures import device_label
from .floor import gelu_alone_us, op_between_gap, weight_pass
from .results import device_slug


TINY = dict(n_layer=2, n_head=4, n_embd=64, n_positions=256, vocab_size=1000)  # --model tiny: for tests


@dataclass
class Settings:
    new_tokens: int = 128  # headline: tokens generated per run
    prompt_len: int = 16
    repeats: int = 3
    warmup: int = 1
    context_len: int = 1024  # per-token sweep: the last step attends over this many tokens
    uncached_points: int = 12  # uncached forwards sampled on a geometric grid of lengths
    length_counts: tuple[int, ...] = (1, 4, 16, 64, 256, 1009)  # new tokens, for the total-time curve
    uncached_max_new_tokens: int = 64  # longest uncached generation actually timed (longer ones: estimated)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    batch_new_tokens: int = 32
    dtypes: tuple[str, ...] = ()  # GPU: ("float32", "float16", "bfloat16")
    bandwidth_mib: int = 256  # summed to measure a CPU's read bandwidth; well beyond its caches
    gap_pairs: int = 24  # the GELU diagnostic: interleaved (floor, floor + GELUs) pairs ...
    gap_passes: int = 16  # ... of this many passes each


FULL_GPU = dict(uncached_max_new_tokens=1009, batch_sizes=(1, 4, 16, 64, 256), batch_new_tokens=128,
                dtypes=("float32", "float16", "bfloat16"))


QUICK = dict(new_tokens=16, prompt_len=8, repeats=2, context_len=128, uncached_points=5, length_counts=(1, 8, 32, 121),
             uncached_max_new_tokens=16, batch_sizes=(1, 4), batch_new_tokens=8, gap_pairs=4, gap_passes=2)


def hf_generate(hf_model, input_ids: torch.Tensor, new_tokens: int, use_cache: bool) -> torch.Tensor:
    """transformers' greedy generate, forced to emit exactly new_tokens tokens (no EOS stop)."""
    return hf_model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, use_cache=use_cache, eos_token_id=None,
                             pad_token_id=0)


def headline(model: GPT2, s: Settings, compiled_step=None, progress: bool = True) -> tuple[list, dict]:
    """Whole-generation timings of every method and the floor (new_tokens passes over the weights), taking
    turns within each repeat so that a burst of background load hits all of them alike."""
    device = model.lm_head.weight.device
    ids = timing.random_prompt(model, 1, s.prompt_len)
    hf = model.to_hf()
    fixed = compiled.FixedShapeKVCache(model.config, 1, s.prompt_len + s.new_tokens, dtype=model.lm_head.weight.dtype,
                                     device=device) if compiled_step else None
    runners = {
        "dynamic": lambda n: generate(model, ids, n, cache="dynamic"),
        "static": lambda n: generate(model, ids, n, cache="static"),
        "uncached": lambda n: generate(model, ids, n, use_cache=False),
        "hf-cached": lambda n: hf_generate(hf, ids, n, use_cache=True),
        "hf-uncached": lambda n: hf_generate(hf, ids, n, use_cache=False),
        "weight-floor": lambda n: [one_pass() for _ in range(n)],
    }
    one_pass, floor_bytes = weight_pass(model)
    if device.type == "cpu":  # kvlib without its transposed LM-head copy, and the floor computed that way too
        linear_pass, _ = weight_pass(model, linear_head=True)
        runners["dynamic-linear-head"] = lambda n: generate_linear_head(model, ids, n)
        runners["weight-floor-linear-head"] = lambda n: [linear_pass() for _ in range(n)]
    if compiled_step:
        runners["static-compiled"] = lambda n: compiled.generate_fixed_shape(model, ids, n, step=compiled_step,
                                                                           cache=fixed)
    extra = {}
    outputs = {}
    for name, run in runners.items():  # warm-up: short runs (the first compiled one compiles)
        t0 = time.perf_counter()
        for _ in range(s.warmup):
            run(min(s.new_tokens, 8))
        timing.synchronize(device)
        if name == "static-compiled":
            extra["compile_and_warmup_s"] = time.perf_counter() - t0
    samples = {name: [] for name in runners}
    bar = tqdm(total=s.repeats * len(runners), desc="headline", disable=not progress, leave=False)
    for _ in range(s.repeats):
        for name, run in runners.items():
            samples[name] += timing.measure(lambda: outputs.__setitem__(name, run(s.new_tokens)), device, 1, 0)
            bar.update()
    bar.close()
    mean_kv = s.prompt_len + (s.new_tokens - 1) / 2
    nbytes = {k: float("nan") if "uncached" in k else timing.bytes_per_decode_step(model, mean_kv) for k in samples}
    nbytes.update({k: floor_bytes for k in samples if k.startswith("weight-floor")})
    records = [timing.summarize(v, sweep="floor" if k.startswith("weight-floor") else "headline", method=k,
                                batch_size=1,
                                context=s.prompt_len + s.new_tokens - 1, tokens=s.new_tokens, dtype=timing.dtype_name(model),
                                bytes_per_step=nbytes[k]) for k, v in samples.items()]
    ref = outputs.pop("dynamic").cpu()
    for k in [k for k in outputs if k.startswith("weight-floor")]:
        outputs.pop(k)
    extra["same_tokens"] = {k: bool(torch.equal(ref, v.cpu())) for k, v in outputs.items()}
    # Where they differ (fp16 kernels may round a near-tie the other way), how many new tokens agree first.
    extra["matching_new_tokens"] = {k: matching_prefix(ref[0, s.prompt_len:], v.cpu()[0, s.prompt_len:])
                                    for k, v in outputs.items()}
    return records, extra


def generate_linear_head(model: GPT2, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """kvlib's dynamic-cache generate with the LM head as F.linear on the tied weight (no transposed copy)."""
    model.lm_head.transposed_copy = False
    try:
        return generate(model, ids, new_tokens, cache="dynamic")
    finally:
        model.lm_head.transposed_copy = True


def matching_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading entries of two 1-D tensors are equal."""
    n = min(len(a), len(b))
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0]) if len(differ) else n


def uncached_crossover(per: dict[tuple[str, int], timing.Measurement], cached: str) -> int | None:
    """Where the curves cross: the shortest sampled context from which on the uncached step is slower than the
    `cached` method's step at the same context (per: (method, context) -> per-token record). None where they do not
    cross within the contexts both were timed at: the uncached step slower at every one (a CPU), or at none.

    At short contexts the two do nearly the same work (a forward over a few tokens vs one token plus the cache's
    bookkeeping), and on a launch-bound GPU the uncached forward can even be the faster one.
    """
    both = sorted(c for (m, c) in per if m == "uncached" and (cached, c) in per)
    slower = [per["uncached", c].median_s > per[cached, c].median_s for c in both]
    if not both or not slower[-1] or all(slower):
        return None
    i = len(slower)
    while slower[i - 1]:
        i -= 1
    return both[i]


def summarize_run(records: list[timing.Measurement], extra: dict) -> dict:
    """The headline numbers: tokens/s, the ratios, % of the floor, and uncached ÷ cached at the longest context."""
    head = {r.method: r for r in records if r.sweep in ("headline", "floor")}
    tps = {k: r.tokens_per_s for k, r in head.items()}
    floor = tps["weight-floor"]
    best = max(tps["dynamic"], tps["static"])
    out = {"tokens_per_s": tps, **extra,
           "kvlib_dynamic_over_hf_cached": tps["dynamic"] / tps["hf-cached"],
           "kvlib_static_over_hf_cached": tps["static"] / tps["hf-cached"],
           "kvlib_cached_over_uncached": tps["dynamic"] / tps["uncached"],
           "hf_cached_over_uncached": tps["hf-cached"] / tps["hf-uncached"],
           "floor_ms": 1e3 / floor,
           "kvlib_percent_of_floor": {k: 100 * tps[k] / floor for k in ("dynamic", "static", "static-compiled")
                                      if k in tps}}
    if "dynamic-linear-head" in tps:  # what the transposed LM-head copy buys, and what it costs in memory
        out["kvlib_linear_head_over_hf_cached"] = tps["dynamic-linear-head"] / tps["hf-cached"]
        out["transposed_copy_speedup"] = tps["dynamic"] / tps["dynamic-linear-head"]
        out["kvlib_linear_head_percent_of_floor"] = 100 * tps["dynamic-linear-head"] / tps["weight-floor-linear-head"]
    gap = next((r for r in records if r.sweep == "floor-gap"), None)
    if gap is not None:  # one GELU after each product (paired differences): what one small op there costs
        out["gelu_gap_ms"] = {"median": 1e3 * gap.median_s, "q1": 1e3 * gap.q1_s, "q3": 1e3 * gap.q3_s}
    out["targets"] = {"cached >= 1.1x hf cached": best >= 1.1 * tps["hf-cached"], "cached >= 90% of floor":
                      best >= 0.9 * floor}
    if "static-compiled" in tps:  # the GPU target: gpt-fast's compiled step against transformers' eager generate
        out["compiled_over_hf_cached"] = tps["static-compiled"] / tps["hf-cached"]
        out["targets"]["compiled >= 5x hf cached"] = out["compiled_over_hf_cached"] >= 5
    per = {(r.method, r.context): r for r in records if r.sweep == "per_token" and r.status == "ok"}
    # Decode steps alone (no prefill, no generate loop), over the headline's contexts: the step's own overhead.
    last = max((r.context for r in records if r.sweep == "headline"), default=0)
    steps = {m: [r.median_s for (mm, c), r in per.items() if mm == m and c <= last] for m in ("dynamic", "static")}
    out["decode_step_percent_of_floor"] = {m: 100 / floor / statistics.median(v)
                                           for m, v in steps.items() if v}
    out["uncached_crossover_context"] = {m: uncached_crossover(per, m) for m in ("dynamic", "static", "static-compiled")
                                         if any(mm == m for mm, _ in per)}
    longest = max((c for m, c in per if m == "uncached"), default=None)
    for m in ("dynamic", "static"):
        if longest is not None and (m, longest) in per:
            out[f"uncached_over_{m}_at_{longest}"] = per["uncached", longest].median_s / per[m, longest].median_s
    return out


def run(model: GPT2, s: Settings, *, sweeps: bool, compile_mode: str | None, progress: bool = True) -> dict:
    """Everything one invocation measures, as a JSON-ready dict (meta, summary) plus the Measurement list."""
    t0 = time.perf_counter()
    load_at_start = os.getloadavg()  # other work on the machine shows here: the record of how quiet it was
    device = model.lm_head.weight.device
    step = compiled.compile_decode_step(compile_mode) if compile_mode is not None else None
    records, extra = headline(model, s, step, progress)
    records.append(op_between_gap(model, s.gap_pairs, s.gap_passes))
    extra["gelu_alone_us"] = gelu_alone_us(model)
    # What a static cache's first step pays on top of its prefill: allocating (and zero-filling) its reservation.
    extra["static_alloc_ms"] = 1e3 * statistics.median(timing.measure(
        lambda: make_cache(model, "static", 1, min(s.context_len, model.config.n_positions)), device, 5, 1))
    if sweeps:
        cl = min(s.context_len, model.config.n_positions)
        counts = [n for n in s.length_counts if s.prompt_len + n - 1 <= cl]
        methods = ("dynamic", "static") + (("static-compiled",) if step else ())
        per = timing.per_token_latency_sweep(model, context_len=cl, prompt_len=s.prompt_len, methods=methods,
                                             uncached_points=s.uncached_points, new_token_counts=counts,
                                             repeats=s.repeats, warmup=s.warmup, compiled_step=step, progress=progress)
        ids = timing.random_prompt(model, 1, s.prompt_len)
        n_unc = max(n for n in counts if n <= s.uncached_max_new_tokens)
        runs = timing.timed_generations(model, ids, n_unc, "uncached", repeats=s.repeats, warmup=s.warmup,
                                        progress=progress)
        records += per + timing.length_records(model, runs, "uncached", ids, counts)
        records += timing.estimate_uncached_totals(per, counts, s.prompt_len)  # where timed too: a cross-check
        records += timing.batch_size_sweep(model, list(s.batch_sizes), new_tokens=s.batch_new_tokens,
                                           prompt_len=s.prompt_len, repeats=s.repeats, warmup=s.warmup,
                                           progress=progress)
        if s.dtypes:
            records += timing.dtype_sweep(model, [getattr(torch, d) for d in s.dtypes], compile_mode=compile_mode,
                                          new_tokens=s.new_tokens, prompt_len=s.prompt_len, repeats=s.repeats,
                                          warmup=s.warmup, progress=progress)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    copy_gbps = timing.measure_copy_bandwidth(device, (1 << 30) if device.type == "cuda" else s.bandwidth_mib * 2**20)
    launch_us = timing.measure_launch_overhead_us(device)
    matmul_gflops = timing.measure_matmul_gflops(device, model.lm_head.weight.dtype,
                                                 n=4096 if device.type == "cuda" else 1024)
    peak, source = timing.peak_bandwidth_gbps(name), "datasheet"
    if peak is None:
        peak = timing.measure_read_bandwidth(device, s.bandwidth_mib * 2**20)
        source = f"measured: the faster of a sum and a matrix-vector product over {s.bandwidth_mib} MiB of fp32"
    import transformers

    meta = {"device": device_label(device), "device_slug": device_slug(device), "dtype": timing.dtype_name(model),
            "torch": torch.__version__, "transformers": transformers.__version__, "weights": model.weights_source,
            "config": {f.name: getattr(model.config, f.name) for f in fields(model.config)},
            "settings": {f.name: getattr(s, f.name) for f in fields(s)}, "compile_mode": compile_mode,
            "peak_bandwidth_gbps": peak, "peak_bandwidth_source": source, "copy_bandwidth_gbps": copy_gbps,
            "launch_overhead_us": launch_us, "matmul_gflops": matmul_gflops,
            "weight_bytes": timing.weight_bytes(model), "ops_per_decode_step": len(timing.count_decode_ops(model)),
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "date": time.strftime("%Y-%m-%d"),
            # kvlib's CPU LM head keeps a transposed copy of the tied (V, C) embedding: these bytes on top
            "lm_head_copy_bytes": model.lm_head.weight.numel() * model.lm_head.weight.element_size()
            if device.type == "cpu" else 0}
    meta["summary"] = summarize_run(records, extra)
    # gpt-fast's "bandwidth achieved": bytes a decode step reads (weights + KV) × steps per second, vs the peak.
    meta["summary"]["percent_of_peak_bandwidth"] = {
        r.method: 100 * r.bandwidth_gbps / peak for r in records
        if r.sweep in ("headline", "floor") and r.bandwidth_gbps == r.bandwidth_gbps}  # NaN (uncached) skipped
    # The launch model: an eager step of k ops costs at least k launches, whatever its bytes.
    meta["summary"]["launch_floor_ms"] = meta["ops_per_decode_step"] * launch_us / 1e3
    meta["elapsed_s"] = time.perf_counter() - t0
    meta["load_average_1min"] = {"start": load_at_start[0], "end": os.getloadavg()[0]}
    return {"meta": meta, "records": records}
