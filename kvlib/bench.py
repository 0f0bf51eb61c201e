"""`python -m kvlib.bench`: how fast kvlib decodes, against transformers and against the weight-streaming floor.

One run on one set of seeded random GPT-2-small weights (fp32, batch 1, CPU unless --device) times whole greedy
generations of the same prompt and the same number of new tokens (no EOS stop): kvlib with a dynamic and a
static cache and without one, and transformers' `generate` with and without its cache (same weights, via
model.to_hf()). Methods take turns within each repeat, so background load hits all of them alike.

The weight-streaming floor is one vector-matrix pass over every weight matrix in the layout kvlib computes with
(the 4L block matrices as `addmm(bias, x, W)` with W (in, out); the LM head as x @ a contiguous (C, V) copy on
CPU, F.linear on GPU): batch-1 decoding must read all of them once per token, so no decode step can be faster.

--out DIR also runs kvlib.timing's sweeps and writes DIR/timing_<slug>.json (device, settings, summary),
DIR/timing_<slug>.csv (every measurement) and the figures DIR/timing_<figure>_<slug>.png.
--quick shrinks everything (for the notebook and the tests); its files carry a "_quick" suffix.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import compiled, timing
from .config import ATTN_IMPLEMENTATIONS, GPT2_SIZES, GPT2Config
from .generation import generate
from .loading import random_gpt2
from .model import GPT2
from .plotting import device_label

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


FULL_GPU = dict(uncached_max_new_tokens=1009, batch_sizes=(1, 4, 16, 64, 256), batch_new_tokens=128,
                dtypes=("float32", "float16", "bfloat16"))
QUICK = dict(new_tokens=16, prompt_len=8, repeats=2, context_len=128, uncached_points=5, length_counts=(1, 8, 32, 121),
             uncached_max_new_tokens=16, batch_sizes=(1, 4), batch_new_tokens=8)


def device_slug(device: torch.device | str) -> str:
    """A short file-name tag: "cpu", or the GPU's model ("h100", "a100", "rtx4090")."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    name = re.sub(r"\b(nvidia|geforce|tesla)\b", " ", torch.cuda.get_device_name(device).lower())
    words = re.split(r"[\s_-]+", name.strip())
    slug = words[0] + (words[1] if len(words) > 1 and words[0].isalpha() else "") if words else "gpu"
    return re.sub(r"[^a-z0-9]", "", slug) or "gpu"


def hf_generate(hf_model, input_ids: torch.Tensor, new_tokens: int, use_cache: bool) -> torch.Tensor:
    """transformers' greedy generate, forced to emit exactly new_tokens tokens (no EOS stop)."""
    return hf_model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, use_cache=use_cache, eos_token_id=None,
                             pad_token_id=0)


def weight_pass(model: GPT2, op_between: bool = False):
    """(one_pass, bytes): a function making one vector-matrix pass over every weight matrix, laid out as kvlib
    multiplies them, and the bytes that pass reads.

    op_between=True also runs a GELU on each product's output, the cheapest op a block runs between two products:
    a diagnostic of what a single small op costs once a product has streamed megabytes through the caches.
    """
    mats = [(m.bias, m.weight) for b in model.transformer.h for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc,
                                                                     b.mlp.c_proj)]
    w = model.lm_head.weight  # (V, C)
    head_t = w.t().contiguous()  # (C, V): kvlib's CPU LM head
    x = {n: torch.randn(1, n, dtype=w.dtype, device=w.device) for n in {wt.shape[0] for _, wt in mats}}

    @torch.inference_mode()
    def one_pass():
        for bias, weight in mats:
            y = torch.addmm(bias, x[weight.shape[0]], weight)  # (1, out)
            if op_between:
                F.gelu(y, approximate="tanh")
        return x[w.shape[1]] @ head_t if w.device.type == "cpu" else F.linear(x[w.shape[1]], w)  # (1, V)

    return one_pass, sum(wt.numel() * wt.element_size() for _, wt in mats) + w.numel() * w.element_size()


def weight_streaming_floor(model: GPT2, repeats: int = 5, warmup: int = 1) -> timing.Measurement:
    """Seconds of one pass over the weights (see weight_pass): no batch-1 decode step can take less."""
    one_pass, nbytes = weight_pass(model)
    samples = timing.measure(one_pass, model.lm_head.weight.device, repeats, warmup)
    return timing.summarize(samples, sweep="floor", method="weight-floor", batch_size=1, context=0, tokens=1,
                            dtype=timing.dtype_name(model), bytes_per_step=nbytes)


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
        "floor+gelu": lambda n: [gelu_pass() for _ in range(n)],
    }
    one_pass, floor_bytes = weight_pass(model)
    gelu_pass, _ = weight_pass(model, op_between=True)
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
    nbytes["weight-floor"] = nbytes["floor+gelu"] = floor_bytes
    sweep = {"weight-floor": "floor", "floor+gelu": "floor-gap"}
    records = [timing.summarize(v, sweep=sweep.get(k, "headline"), method=k, batch_size=1,
                                context=s.prompt_len + s.new_tokens - 1, tokens=s.new_tokens, dtype=timing.dtype_name(model),
                                bytes_per_step=nbytes[k]) for k, v in samples.items()]
    ref = outputs.pop("dynamic").cpu()
    outputs.pop("weight-floor")
    outputs.pop("floor+gelu")
    extra["same_tokens"] = {k: bool(torch.equal(ref, v.cpu())) for k, v in outputs.items()}
    return records, extra


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
    gap = next((r for r in records if r.sweep == "floor-gap"), None)
    if gap is not None:  # the floor again, with one GELU after each product: what one small op there costs
        out["floor_plus_gelu_ms"] = 1e3 * gap.median_s / gap.tokens
    out["targets"] = {"cached >= 1.1x hf cached": best >= 1.1 * tps["hf-cached"], "cached >= 90% of floor":
                      best >= 0.9 * floor}
    per = {(r.method, r.context): r for r in records if r.sweep == "per_token" and r.status == "ok"}
    # Decode steps alone (no prefill, no generate loop), over the headline's contexts: the step's own overhead.
    last = max((r.context for r in records if r.sweep == "headline"), default=0)
    steps = {m: [r.median_s for (mm, c), r in per.items() if mm == m and c <= last] for m in ("dynamic", "static")}
    out["decode_step_percent_of_floor"] = {m: 100 / floor / statistics.median(v)
                                           for m, v in steps.items() if v}
    longest = max((c for m, c in per if m == "uncached"), default=None)
    for m in ("dynamic", "static"):
        if longest is not None and (m, longest) in per:
            out[f"uncached_over_{m}_at_{longest}"] = per["uncached", longest].median_s / per[m, longest].median_s
    return out


def run(model: GPT2, s: Settings, *, sweeps: bool, compile_mode: str | None, progress: bool = True) -> dict:
    """Everything one invocation measures, as a JSON-ready dict (meta, summary) plus the Measurement list."""
    t0 = time.perf_counter()
    device = model.lm_head.weight.device
    step = compiled.compile_decode_step(compile_mode) if compile_mode is not None else None
    records, extra = headline(model, s, step, progress)
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
    peak, source = timing.peak_bandwidth_gbps(name), "datasheet"
    if peak is None:
        peak = timing.measure_read_bandwidth(device, s.bandwidth_mib * 2**20)
        source = f"measured: sum over a {s.bandwidth_mib} MiB fp32 tensor"
    import transformers

    meta = {"device": device_label(device), "device_slug": device_slug(device), "torch": torch.__version__,
            "transformers": transformers.__version__, "weights": model.weights_source,
            "config": {f.name: getattr(model.config, f.name) for f in fields(model.config)},
            "settings": {f.name: getattr(s, f.name) for f in fields(s)}, "compile_mode": compile_mode,
            "peak_bandwidth_gbps": peak, "peak_bandwidth_source": source,
            "weight_bytes": timing.weight_bytes(model), "ops_per_decode_step": len(timing.count_decode_ops(model)),
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}
    meta["summary"] = summarize_run(records, extra)
    # gpt-fast's "bandwidth achieved": bytes a decode step reads (weights + KV) × steps per second, vs the peak.
    meta["summary"]["percent_of_peak_bandwidth"] = {
        r.method: 100 * r.bandwidth_gbps / peak for r in records
        if r.sweep in ("headline", "floor") and r.bandwidth_gbps == r.bandwidth_gbps}  # NaN (uncached) skipped
    meta["elapsed_s"] = time.perf_counter() - t0
    return {"meta": meta, "records": records}


def report(result: dict) -> str:
    """The headline as text: tokens/s per method with its spread, the ratios and the floor."""
    meta, recs = result["meta"], result["records"]
    sm = meta["summary"]
    s = meta["settings"]
    lines = [f"kvlib.bench on {meta['device']} (torch {meta['torch']}, transformers {meta['transformers']})",
             f"weights: {meta['weights']}; {meta['config']['n_layer']} layers, fp32, batch 1, prompt "
             f"{s['prompt_len']} tokens, {s['new_tokens']} new tokens (greedy, no EOS), median of {s['repeats']}",
             f"{'method':<18}{'tok/s':>9}{'ms/token':>10}   (min..max tok/s)"]
    for r in recs:
        if r.sweep in ("headline", "floor"):
            label = "weight floor" if r.sweep == "floor" else r.method
            lines.append(f"{label:<18}{r.tokens_per_s:>9.1f}{1e3 * r.median_s / r.tokens:>10.2f}   "
                         f"({r.tokens / r.max_s:.1f}..{r.tokens / r.min_s:.1f})")
    pct = ", ".join(f"{k} {v:.0f}%" for k, v in sm["kvlib_percent_of_floor"].items())
    if sm["decode_step_percent_of_floor"]:
        pct += "; decode steps alone (per-token sweep): " + ", ".join(
            f"{k} {v:.0f}%" for k, v in sm["decode_step_percent_of_floor"].items())
    lines += [f"kvlib dynamic / transformers cached: {sm['kvlib_dynamic_over_hf_cached']:.2f}x; "
              f"static / transformers cached: {sm['kvlib_static_over_hf_cached']:.2f}x",
              f"kvlib cached / uncached: {sm['kvlib_cached_over_uncached']:.2f}x "
              f"(transformers: {sm['hf_cached_over_uncached']:.2f}x)",
              f"weight-streaming floor {sm['floor_ms']:.2f} ms/token; kvlib tok/s as % of the floor's: {pct}",
              f"same greedy tokens as kvlib dynamic: {sm['same_tokens']}",
              f"the floor with one GELU after each matrix product: {sm['floor_plus_gelu_ms']:.2f} ms/token "
              f"(+{sm['floor_plus_gelu_ms'] - sm['floor_ms']:.2f} ms for {meta['config']['n_layer'] * 4} tiny ops)",
              f"targets (reported, not asserted): {sm['targets']}"]
    lines += [f"{k.replace('_', ' ')}: {v:.1f}x (per-token sweep)" for k, v in sm.items()
              if k.startswith("uncached_over")]
    if "compile_and_warmup_s" in sm:
        lines.append(f"torch.compile + warm-up: {sm['compile_and_warmup_s']:.1f} s")
    lines.append(f"bandwidth achieved, % of the peak {meta['peak_bandwidth_gbps']:.0f} GB/s "
                 f"({meta['peak_bandwidth_source']}): "
                 + ", ".join(f"{k} {v:.0f}%" for k, v in sm["percent_of_peak_bandwidth"].items()))
    lines.append(f"elapsed {meta['elapsed_s']:.0f} s")
    return "\n".join(lines)


def _stem(meta: dict, quick: bool) -> str:
    config = meta["config"]
    model = "" if (config["n_layer"], config["n_embd"]) == (12, 768) else f"_L{config['n_layer']}"  # not GPT-2 small
    return f"{meta['device_slug']}{model}{'_quick' if quick else ''}"


def write_results(result: dict, out_dir: str | Path, quick: bool = False) -> list[Path]:
    """timing_<slug>.json (meta and summary), timing_<slug>.csv (every Measurement) and the figures."""
    import matplotlib.pyplot as plt

    from . import plotting

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = _stem(result["meta"], quick)
    paths = [out_dir / f"timing_{stem}.json", out_dir / f"timing_{stem}.csv"]
    paths[0].write_text(json.dumps(result["meta"], indent=2, default=str) + "\n")
    rows = [r.as_dict() for r in result["records"]]
    with paths[1].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    meta, records = load_results(paths[0])
    for name, fig in plotting.timing_figures(records, meta).items():
        paths.append(plotting.save_figure(fig, f"timing_{name}_{stem}", out_dir))
        plt.close(fig)
    return paths


def load_results(path: str | Path) -> tuple[dict, list[dict]]:
    """(meta, records) saved by write_results: the JSON, and the CSV beside it as dicts of numbers and strings."""
    path = Path(path)
    meta = json.loads(path.read_text())
    records = []
    with path.with_suffix(".csv").open() as f:
        for row in csv.DictReader(f):
            for k in ("batch_size", "context", "tokens", "repeats"):
                row[k] = int(row[k])
            for k in ("median_s", "min_s", "max_s", "q1_s", "q3_s", "bytes_per_step", "tokens_per_s", "bandwidth_gbps"):
                row[k] = float(row[k])
            records.append(row)
    return meta, records


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m kvlib.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--model", default="gpt2", choices=(*GPT2_SIZES, "tiny"),
                   help="the shapes timed, with seeded random weights (tiny: a 2-layer model for tests)")
    p.add_argument("--attn-implementation", default="sdpa", choices=ATTN_IMPLEMENTATIONS,
                   help="kvlib's attention (default sdpa, the fused fast path, as transformers' GPT-2 uses; "
                        "eager: the explicit matmuls the notebooks read)")
    p.add_argument("--out", help="also run the sweeps and write results and figures to this directory")
    p.add_argument("--quick", action="store_true", help="small sweeps: about a minute for GPT-2 small on a CPU")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="time torch.compile of the fixed-shape decode step (auto: on a GPU only)")
    p.add_argument("--repeats", type=int, help="timed repeats per configuration (default 3, quick 2)")
    p.add_argument("--new-tokens", type=int, help="headline: new tokens per generation (default 128, quick 16)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars on stderr")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no GPU")
    s = Settings(**(FULL_GPU if device.type == "cuda" and not args.quick else {}), **(QUICK if args.quick else {}))
    if device.type == "cuda" and args.quick:
        s = replace(s, dtypes=("float32", "bfloat16"))
    s = replace(s, **{k: v for k, v in (("repeats", args.repeats), ("new_tokens", args.new_tokens)) if v})
    config = GPT2Config(**TINY) if args.model == "tiny" else GPT2Config.from_name(args.model)
    config = replace(config, attn_implementation=args.attn_implementation)
    model = random_gpt2(config).to(device)
    use_compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    compile_mode = ("reduce-overhead" if device.type == "cuda" else "default") if use_compile else None
    result = run(model, s, sweeps=args.out is not None, compile_mode=compile_mode, progress=not args.no_progress)
    print(report(result))
    if args.out:
        for path in write_results(result, args.out, quick=args.quick):
            print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
