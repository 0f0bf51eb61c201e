"""A bench result as text, and on disk: timing_<slug>.json (meta, summary), timing_<slug>.csv (every Measurement)
and the figures."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import torch


def device_slug(device: torch.device | str) -> str:
    """A short file-name tag: "cpu", or the GPU's model ("h100", "a100", "rtx4090")."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    name = re.sub(r"\b(nvidia|geforce|tesla)\b", " ", torch.cuda.get_device_name(device).lower())
    words = re.split(r"[\s_-]+", name.strip())
    slug = words[0] + (words[1] if len(words) > 1 and words[0].isalpha() else "") if words else "gpu"
    return re.sub(r"[^a-z0-9]", "", slug) or "gpu"


def report(result: dict) -> str:
    """The headline as text: tokens/s per method with its spread, the ratios and the floor."""
    meta, recs = result["meta"], result["records"]
    sm = meta["summary"]
    s = meta["settings"]
    lines = [f"kvlib.measure.bench on {meta['device']}, {meta.get('date', 'undated')} (torch {meta['torch']}, "
             f"transformers {meta['transformers']})",
             f"weights: {meta['weights']}; {meta['config']['n_layer']} layers, {meta['dtype']}, batch 1, prompt "
             f"{s['prompt_len']} tokens, {s['new_tokens']} new tokens (greedy, no EOS), median of {s['repeats']}",
             f"{'method':<18}{'tok/s':>9}{'ms/token':>10}   (min..max tok/s)"]
    for r in recs:
        if r.sweep in ("headline", "floor"):
            label = {"weight-floor": "weight floor", "weight-floor-linear-head": "floor, F.linear head"}.get(
                r.method, r.method)
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
              f"one GELU after each of the {meta['config']['n_layer'] * 4} block products adds "
              f"{sm['gelu_gap_ms']['median']:.2f} ms to a pass over the weights (paired median; quartiles "
              f"{sm['gelu_gap_ms']['q1']:.2f}..{sm['gelu_gap_ms']['q3']:.2f}); "
              f"one GELU alone: {sm['gelu_alone_us']:.1f} us",
              f"targets (reported, not asserted): {sm['targets']}"]
    if "transposed_copy_speedup" in sm:
        lines.append(f"kvlib dynamic with F.linear on the tied LM head (no {meta['lm_head_copy_bytes'] / 1e6:.1f} MB "
                     f"transposed copy): {sm['kvlib_linear_head_over_hf_cached']:.2f}x transformers cached, "
                     f"{sm['kvlib_linear_head_percent_of_floor']:.0f}% of the floor computed the same way; the copy "
                     f"buys {sm['transposed_copy_speedup']:.2f}x")
    lines += [f"{k.replace('_', ' ')}: {v:.1f}x (per-token sweep)" for k, v in sm.items()
              if k.startswith("uncached_over")]
    if "compile_and_warmup_s" in sm:
        lines.append(f"torch.compile + warm-up: {sm['compile_and_warmup_s']:.1f} s; compiled static / transformers "
                     f"cached: {sm['compiled_over_hf_cached']:.2f}x")
    if not all(sm["same_tokens"].values()):
        lines.append(f"new tokens equal to kvlib dynamic's before the first difference: {sm['matching_new_tokens']}")
    lines.append(f"context from which the uncached step turns slower than the cached one: "
                 f"{sm['uncached_crossover_context']} (None: no crossing where both were timed)")
    if "static_alloc_ms" in sm:
        lines.append(f"allocating a static cache of {s['context_len']} slots: {sm['static_alloc_ms']:.1f} ms")
    lines.append(f"launch overhead {meta['launch_overhead_us']:.1f} us per op x {meta['ops_per_decode_step']} ops "
                 f"of an eager step = {sm['launch_floor_ms']:.2f} ms; device copy {meta['copy_bandwidth_gbps']:.0f} GB/s; "
                 f"matrix product {meta['matmul_gflops']:.0f} GFLOP/s")
    lines.append(f"bandwidth achieved, % of the peak {meta['peak_bandwidth_gbps']:.0f} GB/s "
                 f"({meta['peak_bandwidth_source']}): "
                 + ", ".join(f"{k} {v:.0f}%" for k, v in sm["percent_of_peak_bandwidth"].items()))
    load = meta.get("load_average_1min")
    lines.append(f"elapsed {meta['elapsed_s']:.0f} s"
                 + (f"; 1-minute load average {load['start']:.1f} at the start, {load['end']:.1f} at the end "
                    f"({meta['threads']} threads timed)" if load else ""))
    return "\n".join(lines)


def _stem(meta: dict, quick: bool) -> str:
    config = meta["config"]
    model = "" if (config["n_layer"], config["n_embd"]) == (12, 768) else f"_L{config['n_layer']}"  # not GPT-2 small
    dtype = "" if meta.get("dtype", "float32") == "float32" else f"_{meta['dtype']}"
    return f"{meta['device_slug']}{model}{dtype}{'_quick' if quick else ''}"


def write_results(result: dict, out_dir: str | Path, quick: bool = False) -> list[Path]:
    """timing_<slug>.json (meta and summary), timing_<slug>.csv (every Measurement) and the figures."""
    import matplotlib.pyplot as plt

    from ..figures import save_figure
    from .timing_figures import timing_figures

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
    for name, fig in timing_figures(records, meta).items():
        paths.append(save_figure(fig, f"timing_{name}_{stem}", out_dir))
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
