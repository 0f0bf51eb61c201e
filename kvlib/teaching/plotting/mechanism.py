"""Pictures of the mechanism itself: one layer's K/V tensor growing along T, and which cached keys each new
query row may attend to (the offset causal mask). Shapes: B batch, nh heads, T tokens, hs head size."""
from __future__ import annotations

PROMPT_COLOR, NEW_COLOR, NEWEST_COLOR, EMPTY_COLOR = "#4c72b0", "#8fb0d9", "#dd8452", "#f4f4f4"


def plot_kv_growth(T_prompt: int, n_steps: int, n_head: int, *, head_dim: int, title: str):
    """One layer's key tensor (B=1, nh, T, hs) after the prefill and after each of n_steps decode steps.

    Each panel is the tensor seen from the side: a row per head (dim 1), a column per token (dim 2), each cell
    holding one head's hs-number key vector for one token. Blue: the prompt's K (written by the prefill); light blue: tokens appended by earlier
    steps; orange: the column this step appends. The values tensor grows the same way.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    T_max = T_prompt + n_steps
    fig, axes = plt.subplots(n_steps + 1, 1, figsize=(0.42 * T_max + 2.2, 0.26 * n_head * (n_steps + 1) + 1.4),
                             squeeze=False)
    for step, ax in enumerate(axes[:, 0]):
        T = T_prompt + step
        for pos in range(T_max):
            written_now = pos < T if step == 0 else pos == T - 1  # the prefill writes every prompt column
            color = (EMPTY_COLOR if pos >= T else NEWEST_COLOR if written_now
                     else PROMPT_COLOR if pos < T_prompt else NEW_COLOR)
            for head in range(n_head):
                ax.add_patch(Rectangle((pos, head), 1, 1, facecolor=color, edgecolor="white", linewidth=1))
        name = "after the prefill" if step == 0 else f"after decode step {step}"
        ax.set_title(f"{name}: K of shape (1, {n_head}, {T}, {head_dim})", fontsize=9, loc="left")
        ax.set(xlim=(0, T_max), ylim=(n_head, 0), xticks=[p + 0.5 for p in range(T_max)], yticks=[])
        ax.set_xticklabels([str(p) for p in range(T_max)], fontsize=7)
        ax.set_ylabel(f"{n_head} heads\n(dim 1)", fontsize=8)
        for side in ("top", "right", "left", "bottom"):
            ax.spines[side].set_visible(False)
    axes[-1, 0].set_xlabel(f"token position: the T axis (dim 2) that the cache grows along\n"
                           f"each cell: one head's key for one token, a vector of hs = {head_dim} numbers")
    axes[-1, 0].legend(handles=[Patch(color=NEWEST_COLOR, label="written by this forward"),
                                Patch(color=PROMPT_COLOR, label="prompt K, cached"),
                                Patch(color=NEW_COLOR, label="generated tokens' K, cached")],
                       loc="upper center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, -0.45), frameon=False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_query_rows(masks: dict, *, title: str):
    """Which keys each new query may attend to: masks maps a panel title to a (T_new, T_total) bool mask.

    Columns 0..T_total - T_new - 1 are cached keys, the last T_new the keys of the tokens fed now (appended to
    the cache before attention). Rows are the new queries, labelled by their absolute positions.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    widths = [m.shape[1] for m in masks.values()]
    fig, axes = plt.subplots(1, len(masks), figsize=(sum(widths) * 0.45 + 2.5 * len(masks), 3.2),
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    cmap = ListedColormap([EMPTY_COLOR, PROMPT_COLOR, NEWEST_COLOR])
    for ax, (panel, mask) in zip(axes[0], masks.items()):
        mask = np.asarray(mask, dtype=bool)
        T_new, T_total = mask.shape
        past = T_total - T_new
        codes = np.where(mask, np.where(np.arange(T_total)[None, :] < past, 1, 2), 0)  # (T_new, T_total)
        ax.imshow(codes, cmap=cmap, vmin=0, vmax=2, aspect="equal")
        ax.set_xticks(range(T_total), [f"K{j}" for j in range(T_total)], fontsize=7)
        ax.set_yticks(range(T_new), [f"Q{past + i}" for i in range(T_new)], fontsize=8)
        ax.set_xticks(np.arange(-0.5, T_total), minor=True)
        ax.set_yticks(np.arange(-0.5, T_new), minor=True)
        ax.grid(which="minor", color="white", linewidth=1.5)
        ax.tick_params(which="minor", length=0)
        ax.axvline(past - 0.5, color="k", linewidth=1.5)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(f"keys: {past} cached | {T_new} new (appended first)", fontsize=8)
    axes[0][0].set_ylabel("new queries")
    fig.legend(handles=[Patch(color=PROMPT_COLOR, label="attends to a cached key"),
                        Patch(color=NEWEST_COLOR, label="attends to a key fed now"),
                        Patch(color=EMPTY_COLOR, label="masked (a later token)")],
               loc="lower center", ncol=3, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return fig
