"""Notebook 07's pictures of paged memory: used share vs reservation, the block-size sweep, block tables."""
from __future__ import annotations

from ...measure.waste import PAPER_USED


def used_share_figure(usage: dict):
    """usage: {workload: Usage}. Bars of the share of reserved KV slots holding tokens, with the paper's figures."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.4))
    kinds = [("contiguous_max", "contiguous, max length", "tab:red"),
             ("contiguous_exact", "contiguous, exact length", "tab:orange"), ("paged", "paged, 16-token blocks", "tab:blue")]
    width = 0.8 / (len(kinds) + 1)
    names = list(usage)
    for i, (field, label, color) in enumerate(kinds):
        xs = [j + i * width for j in range(len(names))]
        bars = ax.bar(xs, [100 * getattr(usage[n], field) for n in names], width, label=label, color=color)
        ax.bar_label(bars, fmt="%.0f%%", fontsize=7)
    xs = [j + len(kinds) * width for j in range(len(names))]
    for k, (label, value) in enumerate(PAPER_USED.items()):
        ax.scatter([len(names) - 0.2 + 0.25 * k], [100 * value], marker="D", color="k", zorder=3)
        ax.annotate(f"{label}\n{100 * value:.1f}%", (len(names) - 0.2 + 0.25 * k, 100 * value), fontsize=7,
                    ha="center", xytext=(0, 6), textcoords="offset points")
    ax.set_xticks([j + width for j in range(len(names))] + [len(names)], [f"{n}-like" for n in names] + ["vLLM paper"])
    ax.set_ylabel("reserved KV slots holding tokens (%)")
    ax.set_ylim(0, 130)
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title("Share of reserved KV memory that holds real tokens (time-averaged over decoding)", fontsize=10)
    fig.tight_layout()
    return fig


def block_size_figure(rows: dict):
    """rows: {workload: block_size_sweep(...)}. Used share and block-table entries per request vs block size."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, sweep in rows.items():
        sizes = [r["block_size"] for r in sweep]
        a.plot(sizes, [100 * r["used"] for r in sweep], "o-", label=f"{name}-like")
        b.plot(sizes, [r["table_entries"] for r in sweep], "o-", label=f"{name}-like")
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("block size (tokens)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    a.set_ylabel("slots holding tokens (%)")
    a.set_title("waste: only the last block is partly empty", fontsize=9)
    b.set_yscale("log")
    b.set_ylabel("block-table entries per request")
    b.set_title("bookkeeping: entries (and gathers) per request", fontsize=9)
    fig.tight_layout()
    return fig


def block_table_figure(snapshots: list[dict], num_blocks: int):
    """snapshots: [{"step": int, "tables": {request_id: [block ids]}, "cached": set of free cached blocks}].
    One row of the pool per snapshot, each block coloured by the request(s) holding it. block_view.engine_snapshot
    records these keys (and more, for block_view's per-step HTML and slider)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(snapshots), 1, figsize=(10, 0.95 * len(snapshots) + 0.6), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, snap in zip(axes[:, 0], snapshots):
        owners: dict[int, list[int]] = {}
        for rid, table in snap["tables"].items():
            for b in table:
                owners.setdefault(b, []).append(rid)
        for b in range(num_blocks):
            ids = owners.get(b, [])
            face = colors(ids[0] % 10) if ids else ("0.85" if b in snap["cached"] else "white")
            ax.add_patch(Rectangle((b, 0), 0.92, 0.9, facecolor=face, edgecolor="0.4", lw=0.6,
                                   hatch="//" if len(ids) > 1 else None))
            if ids:
                ax.text(b + 0.46, 0.45, ",".join(map(str, ids)), ha="center", va="center", fontsize=6)
        ax.set_xlim(0, num_blocks)
        ax.set_ylim(0, 1)
        ax.set_yticks([])
        ax.set_ylabel(f"step {snap['step']}", rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xticks(range(0, num_blocks, 4))
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("physical block id (label: requests holding it; hatched: shared; grey: free but cached)")
    fig.suptitle("The block pool over steps: each request's blocks, wherever they are free", fontsize=10)
    fig.tight_layout()
    return fig


def block_table_step_figure(snap: dict):
    """One engine step, drawn as the mechanism: each running request's block table (logical block i, its filled
    slots) with an arrow to the physical block it names in the pool below. `snap` is block_view.engine_snapshot's:
    a static picture of what the block-table slider shows, for readers where widgets do not render."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import ConnectionPatch, Rectangle

    from kvlib.teaching.block_view import block_fill

    tables, n, bs = snap["tables"], snap["num_blocks"], snap["block_size"]
    width = max(n, max((len(t) for t in tables.values()), default=1))
    fig, (top, pool) = plt.subplots(2, 1, figsize=(10, 0.55 * len(tables) + 2.4),
                                    gridspec_kw={"height_ratios": [max(len(tables), 1), 1.4]})
    colors = plt.get_cmap("tab10")
    for row, (rid, table) in enumerate(sorted(tables.items())):
        y = len(tables) - 1 - row
        top.text(-0.3, y + 0.45, f"request {rid}", ha="right", va="center", fontsize=8)
        for logical, (block, filled) in enumerate(zip(table, block_fill(snap, rid))):
            top.add_patch(Rectangle((logical, y), 0.9, 0.9, facecolor=colors(rid % 10), alpha=0.35,
                                    edgecolor="0.3", lw=0.6))
            top.text(logical + 0.45, y + 0.45, f"→ #{block}\n{filled}/{bs}", ha="center", va="center", fontsize=7)
            pool.add_artist(ConnectionPatch((logical + 0.45, y), (block + 0.45, 0.9), "data", "data",
                                            axesA=top, axesB=pool, color=colors(rid % 10), lw=0.7, alpha=0.7))
    owners: dict[int, list[int]] = {}
    for rid, table in tables.items():
        for b in table:
            owners.setdefault(b, []).append(rid)
    for b in range(n):
        ids = owners.get(b, [])
        face = colors(ids[0] % 10) if ids else ("0.85" if b in snap["cached"] else "white")
        pool.add_patch(Rectangle((b, 0), 0.9, 0.9, facecolor=face, edgecolor="0.4", lw=0.6, alpha=0.8 if ids else 1,
                                 hatch="//" if len(ids) > 1 else None))
        pool.text(b + 0.45, 0.45, f"#{b}", ha="center", va="center", fontsize=6)
    for ax, height in ((top, max(len(tables), 1)), (pool, 1)):
        ax.set_xlim(-0.1, width)
        ax.set_ylim(0, height)
        ax.set_yticks([])
        ax.set_xticks([])
        for side in ax.spines.values():
            side.set_visible(False)
    top.set_title(f"Block tables after step {snap['step']}: logical block i → physical block #n "
                  f"(filled slots / {bs})", fontsize=9)
    pool.set_xlabel(f"the pool: {n} physical blocks (coloured: in use; hatched: shared; grey: free but cached)",
                    fontsize=8)
    fig.tight_layout()
    return fig
