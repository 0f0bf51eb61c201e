"""Figures of the ideas, drawn from computed data: KV-cache bytes, FLOPs per step, what each step computes and
reads, a padded batch, generate with and without its cache."""
from __future__ import annotations

from ...measure.figures import finish_side_by_side


def plot_kv_bytes_vs_seq_len(seq_lens, bytes_by_model: dict, *, title: str, budgets: dict | None = None,
                             context_limits: dict | None = None):
    """KV-cache size against cached tokens, one line per model (log-log, GiB).

    seq_lens: token counts (x); bytes_by_model: {label: bytes at each seq_len}; budgets: {label: bytes} drawn
    as horizontal dotted lines (e.g. a GPU's memory); context_limits: {label: the model's context length},
    marked on its line with a dot, the line drawn thin past it (the model cannot run there).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    xs = np.asarray(seq_lens, dtype=float)
    for label, values in bytes_by_model.items():
        ys = np.asarray(values, dtype=float) / 2**30
        limit = (context_limits or {}).get(label)
        if limit is None:
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
            continue
        inside = xs < limit
        at_limit = ys[-1] / xs[-1] * limit  # the cache is linear in tokens
        (line,) = ax.plot(np.r_[xs[inside], limit], np.r_[ys[inside], at_limit], marker="o", markersize=3,
                          label=f"{label} (context {limit:,})")  # solid up to the limit itself
        ax.plot(np.r_[limit, xs[~inside]], np.r_[at_limit, ys[~inside]], color=line.get_color(), linewidth=0.8,
                linestyle=":")
        ax.plot([limit], [at_limit], marker="D", markersize=7, color=line.get_color(), markeredgecolor="k")
    for label, value in (budgets or {}).items():
        ax.axhline(value / 2**30, color="grey", linestyle="--", linewidth=1)
        ax.annotate(label, (xs[0], value / 2**30), textcoords="offset points", xytext=(2, 3), fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="cached tokens per sequence (seq_len)", ylabel="KV cache (GiB)",
           title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, title="diamond: the context limit; dotted: beyond it", title_fontsize=8)
    fig.tight_layout()
    return fig


def plot_cache_vs_weights(tokens, kv_bytes_by_model: dict, weight_bytes_by_model: dict, *, title: str):
    """KV-cache bytes against batch × seq_len, each model's weights as a dashed line of its colour (GiB, log-log).

    Where a solid line crosses its dashed line the cache outgrows the model; that point is marked.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, values in kv_bytes_by_model.items():
        (line,) = ax.plot(tokens, [v / 2**30 for v in values], label=f"{label}: KV cache")
        weights = weight_bytes_by_model[label] / 2**30
        ax.axhline(weights, color=line.get_color(), linestyle="--", linewidth=1)
        per_token = values[-1] / tokens[-1] / 2**30  # the cache is linear in tokens
        ax.plot([weights / per_token], [weights], marker="o", color=line.get_color())
    ax.set(xscale="log", yscale="log", xlabel="tokens cached = batch × seq_len",
           ylabel="bytes (GiB); dashed: the model's weights", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_kv_calculator(seq_lens, totals, seq_len: int, total: int, *, title: str, weights: int | None = None):
    """The memory calculator's picture: KV bytes (GiB) against seq_len, the chosen point marked, weights dashed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(seq_lens, [t / 2**30 for t in totals], label="KV cache")
    ax.plot([seq_len], [total / 2**30], marker="o", color="C3", label=f"seq_len = {seq_len:,}")
    if weights is not None:
        ax.axhline(weights / 2**30, color="grey", linestyle="--", linewidth=1, label="weights")
    ax.set(xlabel="seq_len (tokens per sequence)", ylabel="bytes (GiB)", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_step_flops(t, uncached, cached, *, measured: dict | None = None, title: str):
    """FLOPs of one generation step against the sequence length t it sees, without and with a KV cache.

    uncached, cached: FLOPs per step at each t (plotted in GFLOP). Left panel linear, right panel log scale:
    on the linear one the cached line hugs zero. measured: {label: (ts, flops)} drawn as markers.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, scale in zip(axes, ("linear", "log")):
        ax.plot(t, [f / 1e9 for f in uncached], label="without cache (re-feed t tokens)")
        ax.plot(t, [f / 1e9 for f in cached], label="with KV cache (feed 1 token)")
        for (label, (ts, flops)), marker in zip((measured or {}).items(), "ox^s"):
            ax.plot(ts, [f / 1e9 for f in flops], linestyle="none", marker=marker, color="k", markersize=5,
                    fillstyle="none", label=label)
        ax.set(yscale=scale, xlabel="sequence length t seen by the step (tokens)", ylabel="GFLOP per step",
               title=f"{scale} y axis")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_cumulative_flops(n, totals: dict, *, fits: dict, fit_range: tuple[int, int], title: str):
    """Total FLOPs of generating n tokens, log-log, with the power laws fitted over fit_range (shaded).

    totals: {label: FLOPs at each n}; fits: {label: (slope, intercept)} of log(FLOPs) = slope·log(n) + intercept.
    Each fit is drawn dashed in black over the whole n range: on the curve inside fit_range, and visibly off it
    below, where the terms of lower order bend the curve.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    lo, hi = fit_range
    grid = np.geomspace(min(n), max(n), 80)
    ax.axvspan(lo, hi, color="grey", alpha=0.12, label=f"fit range n = {lo}..{hi}")
    for (label, values), dash in zip(totals.items(), ("--", ":")):
        ax.plot(n, [v / 1e12 for v in values], linewidth=2.5, label=label)
        slope, intercept = fits[label]
        ax.plot(grid, np.exp(intercept) * grid**slope / 1e12, linestyle=dash, color="black", linewidth=1.2,
                label=f"{label}: fit, slope {slope:.2f}, extended")
    ax.set(xscale="log", yscale="log", xlabel="tokens generated n", ylabel="cumulative TFLOP", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_attention_share(t, panels: dict, *, n_positions: int, crossovers: dict, title: str):
    """Attention's share of a step's FLOPs (%) against sequence length, one panel per definition of "the rest".

    panels: {panel title: {label: fraction at each t}}; crossovers: {label: t where that share first reaches
    50 %}, marked. Lengths past n_positions are shaded: GPT-2 cannot run there, the formula just extends.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, (panel, shares) in zip(axes[0], panels.items()):
        for i, (label, values) in enumerate(shares.items()):
            (line,) = ax.plot(t, [100 * v for v in values], label=label, linestyle=("-", "--")[i % 2], linewidth=2)
            if label in crossovers:
                x = crossovers[label]
                ax.plot([x], [50], marker="o", color=line.get_color())
                ax.annotate(f"{x:,}", (x, 50), textcoords="offset points", xytext=(6, -14), fontsize=8,
                            color=line.get_color())
        ax.axhline(50, color="grey", linestyle=":", linewidth=1)
        ax.axvspan(n_positions, max(t), color="grey", alpha=0.12, label=f"beyond n_positions = {n_positions}")
        ax.set(xlabel="sequence length t (tokens)", title=panel, ylim=(0, 100))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    axes[0][0].set_ylabel("attention share of the step's FLOPs (%)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig



def plot_step_times(t, seconds_by_label: dict, *, title: str, reference: dict | None = None):
    """Measured wall time of each generation step (ms) against the sequence length it sees, as lines with dots.

    reference: {label: (ts, seconds)} drawn dashed with hollow markers in the colour of the line of the same
    position (e.g. a committed run on another machine, beside a live one).
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    colors = []
    for label, seconds in seconds_by_label.items():
        (line,) = ax.plot(t, [1e3 * s for s in seconds], marker="o", markersize=3, label=label)
        colors.append(line.get_color())
    for i, (label, (ts, seconds)) in enumerate((reference or {}).items()):
        ax.plot(ts, [1e3 * s for s in seconds], linestyle="--", marker="o", markersize=6, fillstyle="none",
                linewidth=1, color=colors[i % len(colors)] if colors else None, label=label)
    return _finish_lines(fig, ax, xlabel="sequence length t seen by the step (tokens)", ylabel="step time (ms)",
                         title=title)


def plot_positions_per_step(uncached: list[int], cached: list[int], *, title: str):
    """Token positions each generation step feeds through the model, and their running total, with and without
    a KV cache. uncached[s], cached[s]: positions fed at step s (step 0 is the prompt)."""
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.arange(len(uncached))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for values, label, marker in ((uncached, "without cache (re-feed everything)", "o"),
                                  (cached, "with KV cache (prefill, then 1 per step)", "s")):
        ax1.plot(steps, values, marker=marker, markersize=4, label=label)
        ax2.plot(steps, np.cumsum(values), marker=marker, markersize=4, label=label)
    ax1.set(xlabel="generation step", ylabel="token positions processed in the step", ylim=(0, None))
    ax1.yaxis.get_major_locator().set_params(integer=True)  # counts: whole positions only
    ax2.set(xlabel="generation step", ylabel="token positions processed so far", ylim=(0, None))
    return finish_side_by_side(fig, (ax1, ax2), title)


def plot_cache_bytes_per_step(tokens, written: dict, held: dict, *, title: str):
    """Per decode step: bytes of K/V the cache writes (left) and bytes it keeps allocated (right), both in KiB,
    against the tokens cached after the step. written/held map a label to one value per step; series that
    coincide must be given as one label (e.g. "held by both kinds"), so no line hides under another."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.5, 4))
    for label, values in written.items():
        ax1.plot(tokens, [v / 2**10 for v in values], marker="o", markersize=3, label=label)
    for label, values in held.items():
        ax2.plot(tokens, [v / 2**10 for v in values], marker="o", markersize=3, label=label)
    ax1.set(xlabel="tokens cached after the step", ylabel="K/V bytes written in the step (KiB)", ylim=(0, None),
            title="written per step")
    ax2.set(xlabel="tokens cached after the step", ylabel="K/V bytes allocated (KiB)", ylim=(0, None),
            title="allocated after the step")
    return finish_side_by_side(fig, (ax1, ax2), title)


def plot_kv_step_grids(grids: dict, *, title: str):
    """Side-by-side step × position grids from `kvlib.teaching.widgets.kv_step_grid`: which K/V rows every step computes
    (orange) and reads from the cache (blue). grids maps a panel title to an (S, T) grid."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from ..stepgrid import ABSENT, COMPUTED, READ, STEP_COLORS, STEP_LABELS

    cmap = ListedColormap([STEP_COLORS[ABSENT], STEP_COLORS[READ], STEP_COLORS[COMPUTED]])
    fig, axes = plt.subplots(1, len(grids), figsize=(5 * len(grids), 4), squeeze=False)
    for ax, (name, grid) in zip(axes[0], grids.items()):
        ax.imshow(grid, cmap=cmap, vmin=ABSENT, vmax=COMPUTED, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(grid.shape[0]))
        ax.set_xticks([x - 0.5 for x in range(1, grid.shape[1])], minor=True)
        ax.set_yticks([y - 0.5 for y in range(1, grid.shape[0])], minor=True)
        ax.grid(which="minor", color="white", linewidth=1)
        ax.tick_params(which="minor", length=0, labelsize=7)
        ax.tick_params(labelsize=7)
        ax.set(xlabel="token position", ylabel="generation step (0 = the prefill)", title=name)
    handles = [Patch(color=STEP_COLORS[code], label=label) for code, label in STEP_LABELS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def plot_batch_slots(kinds, labels: dict, *, title: str):
    """A padded batch as a (B, T_total) grid of token slots, coloured by what each holds (kvlib.measure.padding.slot_kinds:
    left padding, prompt, generated, padding after EOS). labels maps each slot code to its legend text."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colors = ["#d9d9d9", "tab:blue", "tab:green", "#e8a29a"]  # left padding grey, after-EOS padding rose
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * kinds.shape[1]), 0.5 * kinds.shape[0] + 1.6))
    ax.imshow(kinds, cmap=ListedColormap(colors), vmin=0, vmax=3, aspect="auto", interpolation="nearest")
    ax.set_xticks([x - 0.5 for x in range(1, kinds.shape[1])], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, kinds.shape[0])], minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    ax.set_yticks(range(kinds.shape[0]))
    ax.set(xlabel="position in the batch tensor (token slots)", ylabel="batch row", title=title)
    fig.legend(handles=[Patch(color=colors[k], label=v) for k, v in labels.items()], loc="lower center",
               ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def plot_generate_use_cache(new_tokens, tokens_per_s: dict, *, title: str):
    """Generated tokens per second against the number of new tokens, one line per label (e.g. use_cache=True/False)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rates in tokens_per_s.items():
        ax.plot(new_tokens, rates, marker="o", label=label)
    return _finish_lines(fig, ax, xlabel="new tokens generated (max_new_tokens)",
                         ylabel="generated tokens per second", title=title)


def _finish_lines(fig, ax, **labels):
    """Labels, a y axis from zero, a light grid and a small legend: the common ending of a line plot here."""
    ax.set(ylim=(0, None), **labels)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
