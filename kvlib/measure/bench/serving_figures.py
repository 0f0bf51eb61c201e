"""The serving bench's figures, drawn from serving_cpu.json alone: throughput with its spread, rows per step (the
decomposition's steps), latency against request rate (the vLLM paper's picture), and where a step's time goes."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..figures import plain_log_labels, save_figure
from .serving_report import ENGINE_NAMES, profiles

COLORS = {"kvlib": "tab:blue", "kvlib_compiled": "tab:cyan",
          "vllm_default": "tab:green", "vllm_eager": "tab:olive", "static_exact": "tab:gray",
          "static_max": "tab:red", "hf_continuous": "tab:orange"}


def _device(data: dict, part: str) -> str:
    meta = data["meta"]["parts"].get(part)
    return f"{meta['device']}, {meta['date'][:10]}" if meta else ""


def throughput_figure(data: dict):
    """One panel per workload: median generated tokens/s per engine, whiskers from the slowest to the fastest repeat."""
    import matplotlib.pyplot as plt

    offline = data["offline"]
    fig, axes = plt.subplots(1, len(offline), figsize=(5.2 * len(offline), 3.8), squeeze=False)
    for ax, (workload, r) in zip(axes[0], offline.items()):
        names = list(r["engines"])
        med = [r["engines"][n]["tokens_per_s"]["median"] for n in names]
        lo = [m - r["engines"][n]["tokens_per_s"]["min"] for n, m in zip(names, med)]
        hi = [r["engines"][n]["tokens_per_s"]["max"] - m for n, m in zip(names, med)]
        bars = ax.barh(range(len(names)), med, xerr=[lo, hi], color=[COLORS[n] for n in names], capsize=3)
        ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=6)
        ax.set_yticks(range(len(names)), [ENGINE_NAMES[n] for n in names], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.2 * max(m + h for m, h in zip(med, hi)))
        ax.set_xlabel("generated tokens / s (median; whiskers: min-max of repeats)")
        ax.set_title(f"{len(r['request_lengths'])} {workload}-like requests at once, KV budget {r['budget_tokens']} "
                     f"slots", fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"Offline throughput, same requests and weights — {_device(data, next(iter(offline)))}", fontsize=10)
    fig.tight_layout()
    return fig


def steps_figure(data: dict, workload: str = "alpaca"):
    """Rows in each step's batch, step by step: how many steps each engine needs for the same tokens."""
    import matplotlib.pyplot as plt

    workload = workload if workload in data["offline"] else next(iter(data["offline"]))
    e = data["offline"][workload]["engines"]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for name in ("kvlib", "static_exact", "static_max"):
        if "counters" in e.get(name, {}):
            rows = e[name]["counters"]["rows"]
            ax.plot(range(1, len(rows) + 1), rows, color=COLORS[name], lw=1.2,
                    label=f"{ENGINE_NAMES[name]}: {len(rows)} steps")
    ax.set_xscale("log")
    plain_log_labels(ax.xaxis)
    ax.set_xlabel("engine step (log scale)")
    ax.set_ylabel("requests in the step's batch")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"The same {workload}-like requests: rows per step (static rows include finished requests waiting "
                 f"for the batch's longest)", fontsize=9)
    fig.tight_layout()
    return fig


def _minor_labels(x: float, _pos=None) -> str:
    """Minor ticks of a log axis labelled as plain numbers at 2, 3 and 5 times a power of ten only."""
    mantissa = x / 10 ** math.floor(math.log10(x))
    return f"{x:g}" if any(abs(mantissa - m) < 1e-6 for m in (2, 3, 5)) else ""


def latency_figure(data: dict):
    """The vLLM paper's picture (normalized latency against request rate) and TTFT, TPOT p50 and p99."""
    import matplotlib.pyplot as plt

    o = data["online"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for name, rows in o["engines"].items():
        rates = [x["rate"] for x in rows]
        kw = dict(color=COLORS[name], marker="o", ms=4)
        axes[0].plot(rates, [x["normalized_latency_s"] for x in rows], label=ENGINE_NAMES[name], **kw)
        for ax, key, scale in ((axes[1], "ttft", 1), (axes[2], "tpot", 1e3)):
            ax.plot(rates, [scale * x[f"{key}_p50_s"] for x in rows], **kw)
            ax.plot(rates, [scale * x[f"{key}_p99_s"] for x in rows], ls="--", alpha=0.7, **kw)
    titles = ("the vLLM paper's picture (mean)", "TTFT: p50 solid, p99 dashed", "TPOT: p50 solid, p99 dashed")
    for ax, title, ylabel in zip(axes, titles, ("normalized latency (s / output token)", "time to first token (s)",
                                                "time per output token (ms)")):
        ax.set_xscale("log")
        ax.set_xticks(o["rates"], [f"{r:g}" for r in o["rates"]])
        ax.minorticks_off()
        ax.set_yscale("log")
        plain_log_labels(ax.yaxis)
        ax.yaxis.set_minor_formatter(_minor_labels)  # 0.2, 0.3, 0.5, not 2e-01
        ax.set_xlabel("request rate (requests / s, Poisson)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Online: {len(o['request_lengths'])} {data['online']['workload']}-like requests, KV budget "
                 f"{o['budget_tokens']} slots — {_device(data, 'online')}", fontsize=10)
    fig.tight_layout()
    return fig


def profile_figure(data: dict):
    """Stacked ms per step in each bucket, kvlib's engine and vLLM eager on the same requests (under the profiler)."""
    import matplotlib.pyplot as plt

    prof = profiles(data)
    buckets = list(dict.fromkeys(b for p in prof.values() for b in p["buckets_ms"]))
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(10, 2.2 + 0.7 * len(prof)))
    labelled = set()
    for y, (name, p) in enumerate(prof.items()):
        left = 0.0
        for i, b in enumerate(buckets):
            w = p["buckets_ms"].get(b, 0.0)
            ax.barh(y, w, left=left, color=cmap(i), label=None if b in labelled else b)
            labelled.add(b)
            if w > 0.05 * max(q["step_ms"] for q in prof.values()):
                ax.text(left + w / 2, y, f"{w:.1f}", ha="center", va="center", fontsize=7)
            left += w
    ax.set_yticks(range(len(prof)), [f"{ENGINE_NAMES.get(n, n)}\n({p['steps']} steps)" for n, p in prof.items()],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms per engine step, under torch's profiler")
    ax.set_xlim(0, 1.04 * max(p["step_ms"] for p in prof.values()))
    ax.legend(fontsize=7, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.02), frameon=False)
    fig.suptitle(f"Where a step's time goes, same requests — {_device(data, 'profile')}", fontsize=10)
    fig.tight_layout()
    return fig


def decode_figure(data: dict, device: str):
    """One panel per row count: ms per decode step against mean context, per engine, whiskers min-max of repeats."""
    import matplotlib.pyplot as plt

    from .serving_attention import spread_errorbar

    d = data["decode"]
    rows = sorted({p["rows"] for p in d["points"]})
    fig, axes = plt.subplots(1, len(rows), figsize=(4.6 * len(rows), 3.6), squeeze=False)
    for ax, r in zip(axes[0], rows):
        ps = [p for p in d["points"] if p["rows"] == r]
        for name in ps[0]["ms"]:
            spread_errorbar(ax, [p["mean_context"] for p in ps], [p["ms"][name] for p in ps], color=COLORS[name],
                            label=ENGINE_NAMES[name])
        ax.set_xlabel("tokens in each request's cache (mean over its decode)")
        ax.set_title(f"{r} requests decoding", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("ms per decode step (median)")
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"One decode step against context, GPT-2-small shapes, fp32 ({device})", fontsize=9)
    fig.tight_layout()
    return fig


def write_serving_figures(data: dict, out_dir: str | Path, quick: bool = False) -> list[Path]:
    """Every figure whose part is in `data`, saved as 07_serving_<name>[_quick].png in out_dir."""
    import matplotlib.pyplot as plt

    makers = [("throughput", "offline", throughput_figure), ("steps", "offline", steps_figure),
              ("latency", "online", latency_figure), ("profile", "profile", profile_figure)]
    paths = []
    for name, key, make in makers:
        if key in data:
            fig = make(data)
            paths.append(save_figure(fig, f"07_serving_{name}" + ("_quick" if quick else ""), out_dir))
            plt.close(fig)
    for name, make in dated_figures(data).items():
        fig = make()
        paths.append(save_figure(fig, name + ("_quick" if quick else ""), out_dir))
        plt.close(fig)
    return paths


def dated_figures(data: dict) -> dict:
    """{file name: figure maker} of the parts whose figure names the machine and date it was measured on (those that
    measure kvlib alone, and the decode part), those in `data`."""
    from .serving_attention import attention_figure
    from .serving_chunked import chunked_figure
    from .serving_products import products_figure

    makers = {"attention": ("07_attention_vs_context", attention_figure),
              "chunked": ("07_chunked_prefill", chunked_figure), "products": ("07_serving_products", products_figure),
              "decode": ("07_serving_decode", decode_figure)}
    return {name: (lambda make=make, part=part: make(data, _device(data, part)))
            for part, (name, make) in makers.items() if part in data}


def load_serving(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
