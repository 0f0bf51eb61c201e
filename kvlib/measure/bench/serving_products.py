"""`--part products`: the 49 weight products of one GPT-2-small step (per layer: qkv, attention output, MLP in with
its GELU, MLP out; and the LM head), three ways, at several row counts (the tokens a step feeds).

Plain is what the readable model runs: `addmm(bias, x, W)` with W (in, out) (kvlib.serving.prepacked.PlainLinear),
then GELU; the LM head through the model's own `nn.Linear`. Prepacked is the engine's fast path:
`kvlib.serving.prepacked.PrepackedLinear` (oneDNN's blocked layout, the GELU fused; up to SMALL_ROWS rows MKL over
the (out, in) weight). oneDNN is the same with small_rows=0: the blocked layout at every row count (the engine before
2026-12-06). All are built from one model's weights, as kvlib.serving.packed_forward.PackedGPT2 builds them. Before
timing, every product's outputs are compared with plain's (largest |difference| relative to the output's largest
value). One sample = every product once, in the model's order; the three take turns within each repeat.

Shapes: T rows, C channels, V vocabulary.
"""
from __future__ import annotations

import statistics

import torch

from ...model.gpt2 import GPT2
from ...serving.prepacked import GPT2Products, onednn_available
from ..speculative import interleaved_seconds

AGREE = 1e-5  # largest |difference| / largest |output|, per product, fp32 sums in another order


def step_products(model: GPT2) -> dict:
    """{"plain": [...], "prepacked": [...], "onednn": [...]}: the step's products in order, each a callable
    (T, K) -> (T, N)."""
    def in_order(products: GPT2Products) -> list:
        return [p for layer in products.layers for p in layer] + [products.lm_head]
    return {"plain": in_order(GPT2Products(model, prepack=False)), "prepacked": in_order(GPT2Products(model)),
            "onednn": in_order(GPT2Products(model, small_rows=0))}


def product_inputs(model: GPT2, rows: int, seed: int = 0) -> list[torch.Tensor]:
    """One input per product, (T, K) with K each product's inputs."""
    g = torch.Generator().manual_seed(seed)
    widths = [m.weight.shape[0] for b in model.transformer.h  # Conv1D weights are (K, N)
              for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)] + [model.config.n_embd]
    return [torch.randn(rows, k, generator=g) for k in widths]


def run_products(model: GPT2, rows_list, repeats: int, log=print) -> dict:
    products = step_products(model)
    points = []
    with torch.inference_mode():
        for rows in rows_list:
            xs = product_inputs(model, rows)
            worst = 0.0
            for name in ("prepacked", "onednn"):
                for f, g, x in zip(products["plain"], products[name], xs):
                    a, b = f(x), g(x)
                    worst = max(worst, ((a - b).abs().max() / a.abs().max()).item())
                if worst > AGREE:
                    raise RuntimeError(f"{rows} rows: {name} differs from plain by {worst:.1e} (> {AGREE})")
            steps = {name: (lambda fs=fs: [f(x) for f, x in zip(fs, xs)]) for name, fs in products.items()}
            samples = interleaved_seconds(steps, repeats, warmup=2)
            ms = {name: [1e3 * s for s in v] for name, v in samples.items()}
            points.append(dict(rows=rows, max_rel_diff=worst, ms={name: dict(
                median=statistics.median(v), min=min(v), max=max(v), samples=v) for name, v in ms.items()}))
            m = points[-1]["ms"]
            log(f"  {rows:3d} rows: " + ", ".join(f"{name} {m[name]['median']:.1f} ms" for name in products))
    c = model.config
    return dict(products=len(products["plain"]), n_layer=c.n_layer, n_embd=c.n_embd, vocab_size=c.vocab_size,
                onednn=onednn_available(), repeats=repeats, agree_within=AGREE, points=points)


def products_lines(data: dict) -> list[str]:
    p = data["products"]
    lines = [f"the {p['products']} weight products of one step ({p['n_layer']} layers x 4 + the LM head, width "
             f"{p['n_embd']}), fp32, ms per step, median (min-max) of {p['repeats']} interleaved repeats:"]
    for x in p["points"]:
        a, b = x["ms"]["plain"], x["ms"]["prepacked"]
        c = x["ms"].get("onednn")  # absent from runs before 2026-12-06
        lines.append(f"  {x['rows']:3d} rows: plain addmm {a['median']:6.1f} ({a['min']:5.1f}-{a['max']:5.1f}), "
                     f"prepacked {b['median']:6.1f} ({b['min']:5.1f}-{b['max']:5.1f}): "
                     f"{a['median'] / b['median']:.2f}x" + ("" if c is None else
                     f"; oneDNN's layout at every size {c['median']:6.1f}: {c['median'] / b['median']:.2f}x"))
    worst = max(x["max_rel_diff"] for x in p["points"])
    lines.append(f"  outputs agree: largest |difference| / largest |output| {worst:.1e} (<= {p['agree_within']:.0e})"
                 + ("" if p["onednn"] else "; oneDNN absent here: prepacked ran as addmm"))
    return lines


def products_figure(data: dict, device: str = ""):
    """ms per step of the products against rows, plain and prepacked, with min-max whiskers."""
    import matplotlib.pyplot as plt

    from ..figures import finish_side_by_side
    from .serving_attention import spread_errorbar

    p = data["products"]
    rows = [x["rows"] for x in p["points"]]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, color, label in (("plain", "tab:gray", "plain addmm (the readable model)"),
                               ("onednn", "tab:orange", "oneDNN's blocked layout at every size"),
                               ("prepacked", "tab:blue", "the engine: MKL over (out, in) up to 3 rows, then oneDNN")):
        if name in p["points"][0]["ms"]:  # runs before 2026-12-06 timed two
            spread_errorbar(ax, rows, [x["ms"][name] for x in p["points"]], color=color, label=label)
    ax.set_xscale("log", base=2)  # the few-row end, where the layouts part, spread out
    ax.set_xticks(rows, [str(r) for r in rows])
    ax.minorticks_off()
    ax.set(ylim=(0, None), xlabel="rows (tokens in the step), log scale", ylabel="ms per step, all products")
    return finish_side_by_side(fig, [ax], f"The {p['products']} weight products of one step, fp32: median, whiskers "
                                          f"min-max of {p['repeats']} repeats\n{device}")
