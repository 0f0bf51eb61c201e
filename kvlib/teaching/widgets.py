"""Interactive views for the notebooks (ipywidgets), each backed by pure functions that tests can call.

ipywidgets is imported inside the functions that build widgets, so the pure parts work without it.
"""
from __future__ import annotations

import html

from .stepgrid import (ABSENT, COMPUTED, READ, STEP_COLORS, STEP_LABELS, check_sizes, check_step, kv_step_grid,
                       step_counts, step_summary)

__all__ = ["ABSENT", "COMPUTED", "READ", "STEP_COLORS", "STEP_LABELS", "kv_step_grid", "step_counts", "step_summary",
           "step_grid_html", "step_through", "memory_calculator", "memory_calculator_estimate", "memory_summary_lines",
           "memory_summary_text", "MEMORY_DTYPES"]

# ---------------------------------------------------------------------------------------------------------------
# Step-through of cached vs uncached decoding (the pure grids and counts live in kvlib.teaching.stepgrid).
# ---------------------------------------------------------------------------------------------------------------


def step_grid_html(n_prompt: int, n_new: int, step: int, tokens: list[str] | None = None) -> str:
    """HTML of the two grids side by side, steps 0..step filled in, the current step's row outlined."""
    check_sizes(n_prompt, n_new)
    check_step(n_new, step)
    T = n_prompt + n_new - 1
    if tokens is not None and len(tokens) < T:
        raise ValueError(f"tokens must label at least {T} positions, got {len(tokens)}")
    cell = "width:18px;height:16px;border:1px solid #fff;"
    panels = []
    for cached in (False, True):
        grid = kv_step_grid(n_prompt, n_new, cached)
        head = "".join(
            f'<th title="{html.escape(tokens[p]) if tokens else p}" style="font-weight:normal;font-size:9px">{p}</th>'
            for p in range(T)
        )
        rows = []
        for s in range(n_new):
            outline = "outline:2px solid #222;" if s == step else ""
            cells = "".join(
                f'<td style="{cell}background:{STEP_COLORS[grid[s, p] if s <= step else ABSENT]}"></td>'
                for p in range(T)
            )
            rows.append(f'<tr style="{outline}"><th style="font-weight:normal;font-size:9px">{s}</th>{cells}</tr>')
        title = "cached" if cached else "uncached"
        panels.append(
            f'<div style="display:inline-block;margin-right:24px;vertical-align:top"><b>{title}</b>'
            f'<table style="border-collapse:collapse"><tr><th style="font-size:9px">step \\ position</th>{head}</tr>'
            f'{"".join(rows)}</table></div>'
        )
    legend = " ".join(
        f'<span style="display:inline-block;width:12px;height:12px;background:{STEP_COLORS[code]}"></span> {label}'
        for code, label in STEP_LABELS.items()
    )
    return f'<div class="kvlib-step-grid">{"".join(panels)}<div style="font-size:11px">{legend}</div></div>'


def step_through(n_prompt: int = 4, n_new: int = 8, tokens: list[str] | None = None):
    """A slider over decode steps showing, uncached and cached side by side, which K/V rows each step computes.

    tokens: optional text of each position (shown on hover). Returns an ipywidgets.VBox with CSS classes
    `kvlib-stepthrough` (the box), `kvlib-step-slider` (an IntSlider "step"), `kvlib-step-summary` (HTML text)
    and `kvlib-step-grid-view` (the HTML grids).
    """
    import ipywidgets as widgets

    check_sizes(n_prompt, n_new)
    slider = widgets.IntSlider(value=0, min=0, max=n_new - 1, step=1, description="step", continuous_update=True)
    slider.add_class("kvlib-step-slider")
    summary = widgets.HTML(html.escape(step_summary(n_prompt, n_new, 0)))
    summary.add_class("kvlib-step-summary")
    grid = widgets.HTML(step_grid_html(n_prompt, n_new, 0, tokens))
    grid.add_class("kvlib-step-grid-view")

    def show(change) -> None:
        step = int(change["new"])
        summary.value = html.escape(step_summary(n_prompt, n_new, step))
        grid.value = step_grid_html(n_prompt, n_new, step, tokens)

    slider.observe(show, names="value")
    box = widgets.VBox([slider, summary, grid])
    box.add_class("kvlib-stepthrough")
    return box


# ---------------------------------------------------------------------------------------------------------------
# KV-cache memory calculator (notebook 04): sliders for the shapes that set the cache's size, the total in GiB
# and GB, and a plot of bytes against seq_len. The arithmetic lives in kvlib.measure.memory.
# ---------------------------------------------------------------------------------------------------------------

MEMORY_DTYPES = ("fp32", "fp16", "bf16", "fp8", "int8")


def memory_calculator_estimate(*, n_layer: int, n_head: int, n_kv_head: int, head_dim: int, seq_len: int,
                               batch_size: int = 1, dtype: str = "fp16", sliding_window: int | None = None,
                               n_params: int | None = None) -> dict:
    """The calculator's numbers for one setting of its controls (pure: no widgets involved).

    Returns total_bytes, bytes_per_token, cached_tokens (per sequence), weight_bytes (None without n_params)
    and the inputs. Raises ValueError/TypeError for shapes no model can have (e.g. n_kv_head not dividing n_head).
    """
    from ..measure.memory import ModelPreset, kv_cache_bytes, kv_cache_bytes_per_token, weight_bytes

    shape = ModelPreset("custom", n_layer, n_head, n_kv_head, head_dim, n_params)  # validates the heads
    total = kv_cache_bytes(n_layer=n_layer, n_kv_head=n_kv_head, head_dim=head_dim, seq_len=seq_len,
                           batch_size=batch_size, dtype=dtype, sliding_window=sliding_window)
    return {
        "n_layer": n_layer, "n_head": n_head, "n_kv_head": n_kv_head, "head_dim": head_dim, "seq_len": seq_len,
        "batch_size": batch_size, "dtype": dtype, "sliding_window": sliding_window,
        "cached_tokens": seq_len if sliding_window is None else min(seq_len, sliding_window),
        "bytes_per_token": kv_cache_bytes_per_token(n_layer=n_layer, n_kv_head=n_kv_head, head_dim=head_dim,
                                                    dtype=dtype),
        "total_bytes": total,
        "weight_bytes": None if n_params is None else weight_bytes(shape, dtype),
    }


def memory_summary_lines(estimate: dict) -> tuple[str, str]:
    """(headline, details) for an estimate: the total in GiB and GB; exact bytes, factors, and the weights."""
    total = estimate["total_bytes"]
    headline = f"KV cache: {total / 2**30:,.4g} GiB = {total / 10**9:,.4g} GB"
    details = (f"{total:,} B = batch {estimate['batch_size']} × {estimate['cached_tokens']:,} tokens × "
               f"{estimate['bytes_per_token']:,} B/token ({estimate['dtype']})")
    if estimate["weight_bytes"] is not None:
        details += (f"; weights in {estimate['dtype']}: {estimate['weight_bytes'] / 2**30:,.4g} GiB, "
                    f"cache / weights = {total / estimate['weight_bytes']:.3g}")
    return headline, details


def memory_summary_text(estimate: dict) -> str:
    """The calculator's result as one line of plain text."""
    return "; ".join(memory_summary_lines(estimate))


def memory_calculator(preset: str = "gpt2", *, seq_len: int = 1024, batch_size: int = 1, dtype: str = "fp16",
                      sliding_window: int | None = None, plot: bool = True):
    """A live KV-cache memory calculator: sliders and dropdowns that update the total (GiB and GB) and a plot.

    Returns an ipywidgets.VBox with CSS class "kvlib-memory-calculator"; `.controls` maps names to the control
    widgets, `.total` is the ipywidgets.HTML (class "kvlib-memory-total") and `.estimate` the current
    memory_calculator_estimate. Print memory_summary_text(calc.estimate) for a copy that shows without a kernel.
    """
    import io

    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from ..measure.memory import PRESETS
    from .plotting import plot_kv_calculator

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    if dtype not in MEMORY_DTYPES:
        raise ValueError(f"dtype must be one of {MEMORY_DTYPES}, got {dtype!r}")
    p = PRESETS[preset]
    style = {"description_width": "90px"}
    slider = dict(continuous_update=False, style=style, layout=widgets.Layout(width="480px"))
    controls = {
        "preset": widgets.Dropdown(options=[*PRESETS, "custom"], value=preset, description="preset", style=style),
        "n_layer": widgets.IntSlider(p.n_layer, min=1, max=128, description="n_layer", **slider),
        "n_head": widgets.IntSlider(p.n_head, min=1, max=128, description="n_head", **slider),
        "n_kv_head": widgets.IntSlider(p.n_kv_head, min=1, max=128, description="n_kv_head", **slider),
        "head_dim": widgets.IntSlider(p.head_dim, min=1, max=256, description="head_dim", **slider),
        "seq_len": widgets.IntSlider(seq_len, min=1, max=131072, description="seq_len", **slider),
        "batch_size": widgets.IntSlider(batch_size, min=1, max=256, description="batch_size", **slider),
        "dtype": widgets.Dropdown(options=MEMORY_DTYPES, value=dtype, description="dtype", style=style),
        "sliding_window": widgets.BoundedIntText(sliding_window or 0, min=0, max=131072, description="window (0=off)",
                                                 style=style),
    }
    controls["seq_len"].add_class("kvlib-seq-len-slider")
    total = widgets.HTML()
    total.add_class("kvlib-memory-total")
    image = widgets.Image(format="png", layout=widgets.Layout(width="480px"))
    box = widgets.VBox([*controls.values(), total, *([image] if plot else [])])
    box.add_class("kvlib-memory-calculator")
    box.controls, box.total = controls, total
    applying_preset = False

    def update(_=None) -> None:
        if applying_preset:
            return
        args = {name: w.value for name, w in controls.items() if name != "preset"}
        args["sliding_window"] = args["sliding_window"] or None  # 0 means no window
        name = controls["preset"].value
        try:
            est = memory_calculator_estimate(**args, n_params=PRESETS[name].n_params if name in PRESETS else None)
        except (TypeError, ValueError) as error:  # e.g. n_kv_head not dividing n_head: say so instead of a total
            box.estimate = None
            total.value = f"<b style='color:#b00'>invalid setting:</b> {html.escape(str(error))}"
            return
        box.estimate = est
        headline, details = memory_summary_lines(est)
        total.value = f"<b>{headline}</b><br>{html.escape(details)}"
        if plot:
            xs = sorted({max(1, round(2 * args["seq_len"] * i / 48)) for i in range(49)} | {args["seq_len"]})
            ys = [memory_calculator_estimate(**{**args, "seq_len": x})["total_bytes"] for x in xs]
            fig = plot_kv_calculator(xs, ys, args["seq_len"], est["total_bytes"], weights=est["weight_bytes"],
                                     title=f"{name}: batch {args['batch_size']}, {args['dtype']}")
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=80)
            plt.close(fig)  # drawn into the Image widget only, never shown by the inline backend
            image.value = buffer.getvalue()

    def on_preset(change) -> None:
        nonlocal applying_preset
        if change["new"] not in PRESETS:
            update()
            return
        chosen = PRESETS[change["new"]]
        applying_preset = True
        for field in ("n_layer", "n_head", "n_kv_head", "head_dim"):
            controls[field].value = getattr(chosen, field)
        applying_preset = False
        update()

    def on_shape(_change) -> None:
        # Editing a shape by hand leaves the preset: its parameter count no longer applies.
        if not applying_preset and controls["preset"].value != "custom":
            controls["preset"].value = "custom"  # triggers update() through on_preset
        else:
            update()

    controls["preset"].observe(on_preset, names="value")
    for name, w in controls.items():
        if name != "preset":
            w.observe(on_shape if name in ("n_layer", "n_head", "n_kv_head", "head_dim") else update, names="value")
    update()
    return box
