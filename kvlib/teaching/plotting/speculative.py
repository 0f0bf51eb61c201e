"""Notebook 09's figures: one speculative round as boxes of tokens, the cache round by round, the sampled
distribution against the target's, and speed (V(k) measured, predicted and measured speedups)."""
from __future__ import annotations

from ...measure.figures import finish_side_by_side

COLORS = {"cached": "#d9d9d9", "newest": "#6baed6", "accepted": "#74c476", "rejected": "#fb6a4a",
          "target": "#fd8d3c", "unused": "#f0f0f0", "draft": "#c6dbef"}


def token_label(text: str) -> str:
    """A token as a short readable label: line breaks as ⏎, a leading space as ·."""
    return text.replace("\n", "⏎").replace(" ", "·")[:9]


def _box(ax, x: float, y: float, color: str, text: str = "", hatch: str | None = None, edge: str = "#555") -> None:
    import matplotlib.patches as patches

    ax.add_patch(patches.Rectangle((x + 0.04, y + 0.08), 0.92, 0.84, facecolor=color, edgecolor=edge, hatch=hatch,
                                   linewidth=0.8))
    if text:
        ax.text(x + 0.5, y + 0.5, text, ha="center", va="center", fontsize=7.5)


def plot_round(context: list[str], drafts: list[str], choices: list[str], n_accepted: int, *, title: str):
    """One greedy round: the last context tokens (the newest not yet cached), the k drafts, the target's choice at
    each of the k + 1 positions of the one verification forward, the tokens kept, and the cache before and after.

    context: the last few tokens' text, the newest last; drafts: k; choices: k + 1 (the target's argmax after the
    newest token and after each draft); n_accepted: drafts kept before the first disagreement.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    c, k = len(context), len(drafts)
    width = c + k + 1
    fig, ax = plt.subplots(figsize=(1.0 * width + 2.4, 4.6))
    rows = ["sequence", "1  draft", "2  verify:\ntarget's choice", "3  accept", "4  cache after\nroll back"]
    for x, text in enumerate(context):  # row 0: the sequence so far
        _box(ax, x, 4, COLORS["newest"] if x == c - 1 else COLORS["cached"], token_label(text))
    for i, text in enumerate(drafts):  # row 1: the drafts, at the positions they would take
        _box(ax, c + i, 3, COLORS["draft"], token_label(text))
    for i, text in enumerate(choices):  # row 2: the target's argmax after the newest token and each draft
        state = "accepted" if i < n_accepted else ("target" if i == n_accepted else "unused")
        _box(ax, c - 1 + i + 1, 2, COLORS[state], token_label(text))
    for i in range(n_accepted + 1):  # row 3: what is appended
        _box(ax, c + i, 1, COLORS["accepted" if i < n_accepted else "target"], token_label(choices[i]))
    for x in range(c + k):  # row 4: the cache after the rollback: every token but the newest
        if x < c + n_accepted:
            _box(ax, x, 0, COLORS["cached"] if x < c - 1 else COLORS["newest"] if x == c - 1 else COLORS["accepted"])
        else:
            _box(ax, x, 0, "white", hatch="///", edge=COLORS["rejected"])
    ax.annotate("", xy=(c + n_accepted + 0.9, 0.5), xytext=(c + k + 0.2, 0.5),
                arrowprops=dict(arrowstyle="->", color=COLORS["rejected"]))
    ax.text(c + k + 0.3, 0.5, "crop", va="center", color=COLORS["rejected"], fontsize=8)
    ax.set_yticks([4.5, 3.5, 2.5, 1.5, 0.5], rows, fontsize=8)
    ax.set_xticks([x + 0.5 for x in range(width)], [f"{x - c + 1:+d}" if x != c - 1 else "L-1" for x in range(width)],
                  fontsize=7)
    ax.set(xlim=(0, width + 1.2), ylim=(0, 5), xlabel="position, relative to the newest token (L-1)", title=title)
    ax.tick_params(length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    legend = [("cached", "in the cache"), ("newest", "newest token (fed by the verification)"),
              ("draft", "draft"), ("accepted", "draft accepted (= target's choice)"),
              ("target", "target's own token (correction or bonus), not cached yet"), ("unused", "never looked at")]
    fig.legend(handles=[Patch(color=COLORS[key], label=label) for key, label in legend]
               + [Patch(facecolor="white", edgecolor=COLORS["rejected"], hatch="///", label="written, then cropped")],
               loc="lower center", ncol=4, fontsize=7.5, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def plot_cache_rounds(prompt_len: int, rounds: list[tuple[int, int]], *, title: str, first: int | None = None):
    """Round by round, what the target's cache holds (a step-through as one figure).

    rounds: (drafts k, tokens appended n + 1) per round, from the first. Row r: the positions cached before the
    round (grey), the verification's newest token and accepted drafts (blue, green: kept), its rejected drafts
    (hatched red: written, then cropped), the target's own token (orange: appended, cached next round).
    first: the first position drawn (default: the prompt's last token).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    first = prompt_len - 1 if first is None else first
    L, rows = prompt_len, []
    for k, appended in rounds:
        rows.append((L, k, appended - 1))
        L += appended
    width = max(L0 + k + 1 for L0, k, _ in rows) - first
    fig, ax = plt.subplots(figsize=(min(14, 0.32 * width + 2.5), 0.34 * len(rows) + 1.6))
    for r, (L0, k, n) in enumerate(rows):
        y = len(rows) - 1 - r
        for x in range(first, L0 + k + 1):
            if x < L0 - 1:
                _box(ax, x - first, y, COLORS["cached"], edge="white")
            elif x == L0 - 1:
                _box(ax, x - first, y, COLORS["newest"], edge="white")
            elif x < L0 + n:
                _box(ax, x - first, y, COLORS["accepted"], edge="white")
            elif x == L0 + n:
                _box(ax, x - first, y, COLORS["target"], hatch="///" if n < k else None, edge="white")
            elif x < L0 + k:
                _box(ax, x - first, y, "white", hatch="///", edge=COLORS["rejected"])
        ax.text(L0 + k + 1.2 - first, y + 0.5, f"k={k}, kept {n} + 1; cache: {L0 + n} tokens", va="center",
                fontsize=7)
    ax.set_yticks([len(rows) - 1 - r + 0.5 for r in range(len(rows))], [f"round {r + 1}" for r in range(len(rows))],
                  fontsize=7.5)
    ax.set(xlim=(0, width + 9), ylim=(0, len(rows)), xlabel=f"token position − {first}", title=title)
    ax.tick_params(length=0)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    legend = [("cached", "cached before the round"), ("newest", "newest token, fed by the verification"),
              ("accepted", "accepted draft (cached)"), ("target", "target's token (cached next round)")]
    fig.legend(handles=[Patch(color=COLORS[key], label=label) for key, label in legend]
               + [Patch(facecolor="white", edgecolor=COLORS["rejected"], hatch="///",
                        label="rejected draft: written, then cropped")],
               loc="lower center", ncol=3, fontsize=7.5, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def plot_distribution(labels: list[str], expected, observed: dict, *, title: str):
    """Bars: the target's probability of each outcome against the frequencies each sampler produced.
    expected: (n,) probabilities; observed: {label: (n,) frequencies}."""
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.arange(len(labels))
    w = 0.8 / (1 + len(observed))
    fig, ax = plt.subplots(figsize=(max(7, 0.8 * len(labels) + 2), 3.8))
    ax.bar(x, expected, w, color="black", alpha=0.75, label="target's probability p")
    for i, (label, freq) in enumerate(observed.items(), 1):
        ax.bar(x + i * w, freq, w, label=label)
    ax.set_xticks(x + w * len(observed) / 2, [token_label(t) for t in labels], fontsize=8)
    ax.set(ylabel="probability / frequency", title=title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_speed(ks, v_by_model: dict, alphas, speedup_curves: dict, measured: dict, *, title: str):
    """Left: V(k), one forward over k new tokens relative to one, measured per model, beside the two limits (free
    verification V = 1, no batching V = k). Right: predicted speedup against α (one curve per label), and the
    measured speedups as points at their measured α. v_by_model: {label: {k: V(k)}}; speedup_curves: {label: a speedup
    per α}; measured: {label: (alpha, speedup)}."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, values in v_by_model.items():  # values: {k: V(k)}
        ax1.plot(ks, [values[k] for k in ks], marker="o", label=label)
    ax1.plot(ks, ks, color="grey", ls=":", label="V = k (no gain from batching positions)")
    ax1.axhline(1, color="grey", ls="--", label="V = 1 (verification free: bandwidth-bound decoding)")
    ax1.set(xlabel="k, tokens in one forward", ylabel="time / time of a one-token forward", title="V(k), measured live",
            ylim=(0, max(4, max(max(v.values()) for v in v_by_model.values()) * 1.1)))
    for label, values in speedup_curves.items():
        ax2.plot(alphas, values, label=label, ls="--" if "predicted" in label and "GPU" in label else "-")
    for label, (alpha, speedup) in measured.items():
        ax2.plot([alpha], [speedup], marker="D", markersize=8, ls="none", markeredgecolor="k", label=label)
    ax2.axhline(1, color="black", lw=0.8)
    ax2.set(xlabel="acceptance rate α", ylabel="speedup over plain decoding",
            title="predicted (lines), measured (◆)")
    return finish_side_by_side(fig, (ax1, ax2), title)
