"""Figures of measured timings. Records are dicts as kvlib.measure.bench.load_results returns them (Measurement.as_dict())."""
from __future__ import annotations

from ..figures import plain_log_labels


TIMING_COLORS = {"uncached": "tab:red", "dynamic": "tab:blue", "static": "tab:green", "static-fixed": "tab:olive",
                 "static-compiled": "tab:purple", "hf-cached": "tab:orange", "hf-uncached": "tab:brown",
                 "weight-floor": "grey", "dynamic-linear-head": "tab:cyan", "weight-floor-linear-head": "silver"}


def _timing_rows(records, sweep: str, method: str | None = None, statuses=("ok",)) -> list[dict]:
    rows = [r for r in records if r["sweep"] == sweep and (method is None or r["method"] == method)
            and r["status"] in statuses]
    return sorted(rows, key=lambda r: (r["context"], r["tokens"], r["batch_size"]))


def readable_log_axis(axis) -> None:
    """Ticks at 1, 2 and 5 times each power of ten, labelled as plain numbers (0.5, 20, 200), no minor labels."""
    from matplotlib.ticker import LogLocator

    axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter("{x:g}")
    axis.set_minor_formatter("")


def rolling_median(values, window: int):
    """Median of each run of `window` consecutive values (centred; shorter at the ends): a noisy curve's trend."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    h = window // 2
    return np.array([np.median(v[max(0, i - h):i + h + 1]) for i in range(len(v))])


def plot_per_token_latency(records, *, title: str, crossover: int | None = None, window: int = 31):
    """Milliseconds per decode step against T_total. Left, log-log: cached methods as lines with their
    interquartile band, sampled uncached forwards as points with min–max bars (a slope of 1 there means time
    proportional to the context); `crossover`, the context from which the uncached step is the slower one, as a
    dotted vertical line. Right, linear axes, cached methods only: each step's median (faint) and a rolling
    median over `window` steps, so that how much a cached step grows with the context can be read off."""
    import matplotlib.pyplot as plt

    fig, (ax, ax_c) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1.1, 1]})
    for method, color in TIMING_COLORS.items():
        rows = _timing_rows(records, "per_token", method)
        if not rows:
            continue
        x = [r["context"] for r in rows]
        med = [1e3 * r["median_s"] for r in rows]
        if method == "uncached":
            err = [[max(m - 1e3 * r["min_s"], 0) for m, r in zip(med, rows)],
                   [max(1e3 * r["max_s"] - m, 0) for m, r in zip(med, rows)]]
            ax.errorbar(x, med, yerr=err, fmt="o-", color=color, capsize=3, label="uncached (one forward of T_total)")
            continue
        ax.plot(x, med, color=color, linewidth=0.8, label=f"{method} cache")
        ax.fill_between(x, [1e3 * r["q1_s"] for r in rows], [1e3 * r["q3_s"] for r in rows], color=color,
                        alpha=0.2, linewidth=0)
        w = max(1, min(window, len(med) // 3) | 1)  # odd, and short enough for a live sweep of a few steps
        ax_c.plot(x, med, color=color, linewidth=0.5, alpha=0.35)
        ax_c.plot(x, rolling_median(med, w), color=color, linewidth=2,
                  label=f"{method} cache (rolling median of {w} steps)" if w > 1 else f"{method} cache")
    if crossover is not None:
        ax.axvline(crossover, color="black", linestyle=":", linewidth=1,
                   label=f"uncached slower from T_total = {crossover}")
    ax.set(xscale="log", yscale="log", xlabel="context: tokens the step attends over (T_total)",
           ylabel="time per decode step (ms)", title="all methods, log-log")
    readable_log_axis(ax.yaxis)
    ax.xaxis.set_major_formatter("{x:g}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax_c.set(xlabel="context: tokens the step attends over (T_total)", ylabel="time per decode step (ms)",
             title="cached methods, linear axes", ylim=(0, None))
    ax_c.grid(True, alpha=0.3)
    ax_c.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_generation_length(records, *, title: str):
    """Total generation time (left) and tokens/s (right) against new tokens, log-log. Dashed hollow markers:
    uncached totals summed from sampled forwards ("estimated"), not timed."""
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, color in TIMING_COLORS.items():
        for status, style in (("ok", dict(marker="o", linestyle="-")),
                              ("estimated", dict(marker="o", linestyle="--", markerfacecolor="none"))):
            rows = _timing_rows(records, "length", method, (status,))
            if not rows:
                continue
            n = [r["tokens"] for r in rows]
            label = method + (" (estimated from sampled forwards)" if status == "estimated" else "")
            if method == "static" and status == "ok":  # often on top of dynamic: drawn so that both show
                style = dict(style, linestyle=(0, (4, 3)), marker="s", markerfacecolor="none", markersize=7)
            ax_t.plot(n, [r["median_s"] for r in rows], color=color, label=label, **style)
            ax_r.plot(n, [r["tokens_per_s"] for r in rows], color=color, label=label, **style)
    ax_t.set(xscale="log", yscale="log", xlabel="new tokens generated", ylabel="total time, prefill included (s)")
    ax_r.set(xscale="log", yscale="log", xlabel="new tokens generated", ylabel="tokens per second")
    for ax in (ax_t, ax_r):
        ax.grid(True, which="both", alpha=0.3)
        plain_log_labels(ax.yaxis)
    ax_r.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_batch_throughput(records, *, title: str):
    """Generated tokens/s (all rows together) against batch size, log-log: medians with min–max whiskers, and
    dotted the ideal of each method (batch 1's rate times B: a step that costs the same at any batch size).
    Out-of-memory runs are marked with an x."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    top = 1.3 * max((r["tokens_per_s"] for r in _timing_rows(records, "batch")), default=1.0)
    for method, color in TIMING_COLORS.items():
        rows = _timing_rows(records, "batch", method)
        if rows:
            b = [r["batch_size"] for r in rows]
            tps = [r["tokens_per_s"] for r in rows]
            per_run = [r["batch_size"] * r["tokens"] for r in rows]  # tokens one run generates
            err = [[max(t - n / r["max_s"], 0) for t, n, r in zip(tps, per_run, rows)],
                   [max(n / r["min_s"] - t, 0) for t, n, r in zip(tps, per_run, rows)]]
            ax.errorbar(b, tps, yerr=err, fmt="o-", color=color, capsize=3, label=f"{method} cache (min..max)")
            ax.plot(b, [tps[0] * x / b[0] for x in b], ":", color=color, linewidth=1,
                    label=f"{method}: batch {b[0]} rate x B (ideal)")
        oom = _timing_rows(records, "batch", method, ("oom",))
        if oom:  # drawn above the measured points, where a throughput would have been
            ax.plot([r["batch_size"] for r in oom], [top] * len(oom), "x", color=color, markersize=9,
                    label=f"{method}: out of memory")
    ax.set(yscale="log", xlabel="batch size (sequences decoded together)",
           ylabel="generated tokens per second, all rows", title=title)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["batch_size"] for r in records if r["sweep"] == "batch"}))
    ax.xaxis.set_major_formatter("{x:g}")
    readable_log_axis(ax.yaxis)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_headline(records, *, title: str):
    """Tokens/s of every headline method and of the weight-streaming floor (bars; whiskers: min..max run)."""
    import matplotlib.pyplot as plt

    rows = [r for r in records if r["sweep"] in ("headline", "floor") and r["status"] == "ok"]
    rows.sort(key=lambda r: r["tokens_per_s"])
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.2))
    y = range(len(rows))
    tps = [r["tokens_per_s"] for r in rows]
    err = [[max(t - r["tokens"] / r["max_s"], 0) for t, r in zip(tps, rows)],  # max(…, 0): rounding in the CSV
           [max(r["tokens"] / r["min_s"] - t, 0) for t, r in zip(tps, rows)]]
    ax.barh(y, tps, xerr=err, color=[TIMING_COLORS.get(r["method"], "grey") for r in rows], capsize=3)
    names = {"weight-floor": "weight-streaming floor", "hf-cached": "transformers, cache",
             "hf-uncached": "transformers, no cache", "uncached": "kvlib, no cache",
             "dynamic-linear-head": "kvlib, dynamic, no LM-head copy",
             "weight-floor-linear-head": "floor, no LM-head copy"}
    ax.set_yticks(list(y), [names.get(r["method"], f"kvlib, {r['method']} cache") for r in rows])
    for i, (t, up) in enumerate(zip(tps, err[1])):
        ax.annotate(f"{t:.1f}", (t + up, i), xytext=(6, -3), textcoords="offset points", fontsize=8)  # past the whisker
    ax.set(xlabel="generated tokens per second (batch 1)", title=title)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_dtype_throughput(records, *, title: str, peak_gbps: float | None = None):
    """Tokens/s per dtype and method (grouped bars), each labelled with its bandwidth as % of the peak."""
    import matplotlib.pyplot as plt

    rows = _timing_rows(records, "dtype")
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(len(methods), 1)
    for j, method in enumerate(methods):
        for i, dtype in enumerate(dtypes):
            for r in (r for r in rows if r["method"] == method and r["dtype"] == dtype):
                x = i + (j - (len(methods) - 1) / 2) * width
                ax.bar(x, r["tokens_per_s"], width, color=TIMING_COLORS.get(method, "grey"),
                       label=method if i == 0 else None)
                if peak_gbps and r["bandwidth_gbps"] == r["bandwidth_gbps"]:
                    ax.annotate(f"{100 * r['bandwidth_gbps'] / peak_gbps:.0f}%", (x, r["tokens_per_s"]),
                                ha="center", xytext=(0, 2), textcoords="offset points", fontsize=7)
    ax.set_xticks(range(len(dtypes)), dtypes)
    ax.set(xlabel="dtype of weights and KV cache", ylabel="generated tokens per second (batch 1)",
           title=title + ("\nlabels: bandwidth achieved, % of peak" if peak_gbps else ""))
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def timing_figures(records, meta: dict) -> dict:
    """Every timing figure of one kvlib.measure.bench result, keyed by the name kvlib.measure.bench saves it under."""
    device = meta["device"] + ("" if meta.get("dtype", "float32") == "float32" else f", {meta['dtype']}")
    crossover = meta.get("summary", {}).get("uncached_crossover_context", {}).get("dynamic")
    figs = {"headline": plot_headline(records, title=f"GPT-2 decoding speed, {device}")}
    if any(r["sweep"] == "per_token" for r in records):
        figs["per_token"] = plot_per_token_latency(records, title=f"Time per decode step, {device}",
                                                   crossover=crossover)
    if any(r["sweep"] == "length" for r in records):
        figs["vs_length"] = plot_generation_length(records, title=f"Generation time against length, {device}")
    if any(r["sweep"] == "batch" for r in records):
        figs["batch"] = plot_batch_throughput(records, title=f"Cached decoding throughput against batch, {device}")
    if any(r["sweep"] == "dtype" for r in records):
        figs["dtype"] = plot_dtype_throughput(records, title=f"Decoding speed by dtype, {meta['device']}",
                                              peak_gbps=meta.get("peak_bandwidth_gbps"))
    return figs
