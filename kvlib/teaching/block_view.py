"""One engine step's block tables and block pool, as HTML (pure), and a slider over the steps (ipywidgets).

    history = []
    while engine.has_unfinished_requests():
        engine.step()
        history.append(engine_snapshot(engine, len(history)))
    block_table_stepper(history)           # in a notebook: drag "step"

`engine_snapshot` copies what the step left behind (no tensors): each running request's block table and how many of
its tokens have K/V in the pool, every block's reference count, which blocks hold a registered prefix, the free list.
`block_table_html` draws one snapshot; `snapshot_summary` says it in a line. ipywidgets is imported only inside
`block_table_stepper`, so the rest works without it. This module reads an engine without importing kvlib.serving.
"""
from __future__ import annotations

import html

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")  # matplotlib's tab10, as block_table_figure colours requests
FREE, CACHED = "#ffffff", "#d9d9d9"  # a free block; a free block still holding a cached prefix (grey, as the figure)
HATCH = "repeating-linear-gradient(45deg,rgba(0,0,0,{}) 0 2px,transparent 2px 6px)"  # shared: reference count > 1


def pool_snapshot(block_manager, sequences, step: int) -> dict:
    """The state a step leaves: a copy of `sequences`' block tables and of the block manager's counts."""
    bm = block_manager
    return {
        "step": step, "num_blocks": bm.num_blocks, "block_size": bm.block_size,
        "tables": {s.seq_id: list(s.block_table) for s in sequences},  # request id -> physical block ids, in order
        "computed": {s.seq_id: s.num_computed_tokens for s in sequences},  # tokens whose K/V are in its blocks
        "prefix_hits": {s.seq_id: s.num_cached_tokens for s in sequences},  # of those, taken from the prefix cache
        "ref_counts": list(bm.ref_counts),
        "hashed": {b for b in range(bm.num_blocks) if bm.block_hash[b] is not None},  # registered in the prefix cache
        "free": list(bm.free_blocks),  # least recently freed first
        "cached": {b for b in bm.free_blocks if bm.block_hash[b] is not None},  # free, prefix kept until evicted
    }


def engine_snapshot(engine, step: int) -> dict:
    """pool_snapshot of an LLMEngine's running requests (call after engine.step())."""
    return pool_snapshot(engine.block_manager, engine.scheduler.running, step)


def block_fill(snap: dict, request_id: int) -> list[int]:
    """Filled slots of each of the request's blocks: full blocks, then the last one partly filled."""
    bs, computed = snap["block_size"], snap["computed"][request_id]
    return [min(bs, max(0, computed - i * bs)) for i in range(len(snap["tables"][request_id]))]


def pool_counts(snap: dict) -> dict:
    """in_use + free == num_blocks; cached counts the free blocks that still hold a reusable prefix."""
    in_use = sum(r > 0 for r in snap["ref_counts"])
    shared = sum(r > 1 for r in snap["ref_counts"])
    return {"in_use": in_use, "shared": shared, "free": len(snap["free"]), "cached": len(snap["cached"]),
            "num_blocks": snap["num_blocks"]}


def snapshot_summary(snap: dict) -> str:
    """One line: the step, its running requests and how the pool divides."""
    c = pool_counts(snap)
    n = len(snap["tables"])
    return (f"step {snap['step']}: {n} running request{'s' * (n != 1)} | pool of {c['num_blocks']} blocks of "
            f"{snap['block_size']} slots: {c['in_use']} in use ({c['shared']} shared), {c['free']} free "
            f"({c['cached']} of them still cached)")


def _owners(snap: dict) -> dict[int, list[int]]:
    owners: dict[int, list[int]] = {}
    for rid, table in snap["tables"].items():
        for b in table:
            owners.setdefault(b, []).append(rid)
    return owners


def _block_cell(snap: dict, rid: int, logical: int, block: int, filled: int) -> str:
    """One logical block of a request: its physical id, its slots (filled ones coloured), its markers."""
    refs, hashed = snap["ref_counts"][block], block in snap["hashed"]
    color = COLORS[rid % len(COLORS)]
    slots = "".join(f'<span style="display:inline-block;width:6px;height:8px;margin-right:1px;border:1px solid '
                    f'{color};background:{color if s < filled else FREE}"></span>' for s in range(snap["block_size"]))
    marks = (f" ×{refs}" if refs > 1 else "") + (" ◆" if hashed else "")
    title = (f"request {rid}, logical block {logical} -> physical block {block}: {filled}/{snap['block_size']} "
             f"slots filled, reference count {refs}{', shared' if refs > 1 else ''}"
             f"{', in the prefix cache' if hashed else ''}")
    back = f"background:{HATCH.format(.15)};" if refs > 1 else ""
    return (f'<td class="kvlib-block" data-request="{rid}" data-logical="{logical}" data-physical="{block}" '
            f'data-filled="{filled}" data-refs="{refs}" data-shared="{int(refs > 1)}" data-cached="{int(hashed)}" '
            f'title="{html.escape(title)}" style="border:1px solid #999;padding:1px 3px;{back}'
            f'font-size:10px;text-align:center"><div style="color:#666">{logical}</div>'
            f'<b>#{block}</b>{marks}<div>{slots}</div></td>')


def _pool_cell(snap: dict, block: int, owners: dict[int, list[int]]) -> str:
    ids, refs = owners.get(block, []), snap["ref_counts"][block]
    if refs:
        state, face = "in_use", COLORS[ids[0] % len(COLORS)] if ids else "#000"
    else:
        state, face = ("cached", CACHED) if block in snap["cached"] else ("free", FREE)
    back = f"background:{HATCH.format(.45)},{face};" if refs > 1 else f"background:{face};"
    title = f"block {block}: {state.replace('_', ' ')}" + (f", requests {ids}, reference count {refs}" if refs else "")
    return (f'<td class="kvlib-pool-block" data-block="{block}" data-state="{state}" data-refs="{refs}" '
            f'title="{html.escape(title)}" style="width:16px;height:16px;border:1px solid #999;{back}'
            f'font-size:8px;text-align:center;color:#fff">{refs if refs > 1 else ""}</td>')


def block_table_html(snap: dict) -> str:
    """HTML of one snapshot: each running request's block table (logical -> physical, filled slots, shared blocks
    hatched with their reference count, blocks in the prefix cache marked ◆) and the pool (in use / free / cached)."""
    if not isinstance(snap, dict) or not {"tables", "ref_counts", "free", "computed"} <= snap.keys():
        raise ValueError("snap must come from pool_snapshot / engine_snapshot")
    owners = _owners(snap)
    rows = []
    for rid, table in snap["tables"].items():
        cells = "".join(_block_cell(snap, rid, i, b, f) for i, (b, f) in enumerate(zip(table, block_fill(snap, rid))))
        hit = snap["prefix_hits"].get(rid, 0)
        about = f"{snap['computed'][rid]} tokens in {len(table)} blocks"
        about += f", {hit} from the prefix cache" if hit else ""
        rows.append(f'<tr class="kvlib-block-row" data-request="{rid}"><th style="text-align:left;font-size:11px;'
                    f'padding-right:8px;white-space:nowrap"><span style="color:{COLORS[rid % len(COLORS)]}">■</span> '
                    f'request {rid}<div style="font-weight:normal;color:#666">{about}</div></th>{cells}</tr>')
    tables = (f'<table class="kvlib-block-tables" style="border-collapse:separate;border-spacing:2px">'
              f'{"".join(rows)}</table>' if rows else '<div style="font-size:11px">(no running request)</div>')
    pool = "".join(_pool_cell(snap, b, owners) for b in range(snap["num_blocks"]))
    ids = "".join(f'<td style="font-size:7px;text-align:center;color:#666">{b}</td>' for b in range(snap["num_blocks"]))
    c = pool_counts(snap)
    legend = (f'pool: {c["in_use"]} in use (coloured by request; hatched: shared, with its reference count), '
              f'{c["free"]} free (white) of which {c["cached"]} still cached (grey). '
              'Block tables: small number = logical block, #n = physical block, squares = slots filled, '
              '◆ = in the prefix cache.')
    return (f'<div class="kvlib-block-view"><b style="font-size:11px">block tables</b>{tables}'
            f'<b style="font-size:11px">block pool</b><table class="kvlib-block-pool" style="border-collapse:separate;'
            f'border-spacing:1px"><tr>{pool}</tr><tr>{ids}</tr></table>'
            f'<div style="font-size:10px;color:#444">{html.escape(legend)}</div></div>')


def block_table_stepper(history: list[dict]):
    """A slider "step" over consecutive engine steps, showing each step's block tables and pool.

    history: engine_snapshot(engine, step) for each step in a row. Returns an ipywidgets.VBox with CSS classes
    `kvlib-block-stepper` (the box), `kvlib-block-step-slider` (the IntSlider "step"), `kvlib-block-summary` (the
    line of text) and `kvlib-block-table-view` (the HTML of block_table_html).
    """
    import ipywidgets as widgets

    steps = [snap["step"] for snap in history]
    if not steps or steps != list(range(steps[0], steps[0] + len(steps))):
        raise ValueError(f"history must hold one snapshot per step, steps in a row; got steps {steps}")
    by_step = dict(zip(steps, history))
    slider = widgets.IntSlider(value=steps[0], min=steps[0], max=steps[-1], step=1, description="step",
                               continuous_update=True)
    slider.add_class("kvlib-block-step-slider")
    summary = widgets.HTML(html.escape(snapshot_summary(history[0])))
    summary.add_class("kvlib-block-summary")
    view = widgets.HTML(block_table_html(history[0]))
    view.add_class("kvlib-block-table-view")

    def show(change) -> None:
        snap = by_step[int(change["new"])]
        summary.value = html.escape(snapshot_summary(snap))
        view.value = block_table_html(snap)

    slider.observe(show, names="value")
    box = widgets.VBox([slider, summary, view])
    box.add_class("kvlib-block-stepper")
    return box
