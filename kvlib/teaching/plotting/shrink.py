"""Figures of notebook 08 (shrinking the cache), drawn from what they are given: the sweep's results
(kvlib.measure.shrink, figures/shrink_cpu.json), a model's keys, singular values.

`summary_points` turns the sweep into one row per method: cache bytes per token at the model's full context
(fp16 storage, so that the methods compare on one convention) and the paired perplexity ratio with its ±2 standard
errors; `plot_summary` draws them.
"""
from __future__ import annotations

import math

import torch

from ...cache.latent import latent_cache_bytes
from ...cache.quantization import quantized_kv_cache_bytes

FAMILY_COLORS = {"MHA": "black", "GQA/MQA (mean-pooled)": "tab:orange", "MLA (SVD)": "tab:blue",
                 "quantized (KIVI-style)": "tab:green", "window": "tab:purple", "uptrained": "tab:red"}


def plot_gqa_heads(n_head: int = 8, kv_heads=(8, 2, 1)):
    """Which K/V head each query head reads, for MHA, GQA and MQA (the cache holds only the K/V heads)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(kv_heads), figsize=(11, 2.6))
    for ax, n_kv in zip(axes, kv_heads):
        g = n_head // n_kv
        name = "MHA (GPT-2)" if g == 1 else ("MQA" if n_kv == 1 else f"GQA, g = {g}")
        for h in range(n_head):
            ax.add_patch(plt.Rectangle((h, 1.6), 0.8, 0.6, color="tab:blue"))
            ax.plot([h + 0.4, (h // g) * g + g / 2 - 0.1], [1.6, 0.8], color="gray", lw=0.8)
        for j in range(n_kv):
            ax.add_patch(plt.Rectangle((j * g + g / 2 - 0.5, 0.2), 0.8, 0.6, color="tab:orange"))
        ax.set(xlim=(-0.3, n_head + 0.1), ylim=(0, 2.4), title=f"{name}: {n_kv} K/V head(s) cached")
        ax.text(-0.2, 2.25, "query heads", fontsize=8), ax.text(-0.2, 0.0, "K/V heads (cached)", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_key_magnitudes(keys: torch.Tensor, title: str):
    """|key| of one head as an image: token position across (x), key channel down (y). keys: (T, hs)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    im = ax.imshow(keys.T.abs(), aspect="auto", cmap="viridis")  # (hs, T): one row per channel
    ax.set(xlabel="token position", ylabel="key channel", title=title)
    ax.yaxis.set_major_locator(plt.MaxNLocator(integer=True))  # channels are whole numbers
    fig.colorbar(im, ax=ax, label="|key value|")
    fig.tight_layout()
    return fig


def plot_window_masks(masks: dict):
    """Boolean (T, T) masks side by side, {title: mask}: query position down, key position across."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(masks), figsize=(4.5 * len(masks), 4))
    for ax, (title, mask) in zip(axes, masks.items()):
        ax.imshow(mask, cmap="Blues")
        ax.set(title=title, xlabel="key position", ylabel="query position")
    fig.tight_layout()
    return fig


def plot_kv_spectrum(singular_values: torch.Tensor, ranks=(), title: str = ""):
    """Share of each layer's [W_k | W_v] kept by its top r singular directions (squared Frobenius norm) against r."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    energy = singular_values.double() ** 2  # (L, C)
    kept = energy.cumsum(-1) / energy.sum(-1, keepdim=True)  # (L, C)
    r = torch.arange(1, kept.shape[1] + 1)
    for layer, row in enumerate(kept):
        ax.plot(r, row, label=f"layer {layer}")
    for rank in ranks:
        ax.axvline(rank, color="gray", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel="kv_lora_rank r (latent numbers cached per token per layer)",
           ylabel="share of ‖[W_k | W_v]‖² kept", title=title)
    ax.set_xticks([int(v) for v in ranks] or [1, 8, 32, 128], labels=[str(int(v)) for v in ranks] or None)
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_window_nll(window: dict, attention: dict, uniform_label: str = "uniform share 1/(p+1)"):
    """Left: held-out perplexity against position (bins of 16) per mask. Right: the weight on the first token as a
    multiple of the uniform share, per layer (bars: mean over heads; dots: the most first-token-heavy head)."""
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    for name, nll in window["per_position_nll"].items():
        nll = torch.tensor(nll)
        binned = nll[: len(nll) // 16 * 16].view(-1, 16).mean(1).exp()  # perplexity in bins of 16 positions
        ax.plot(torch.arange(len(binned)) * 16 + 8, binned, label=name)
    ax.axvline(window["window"], color="gray", lw=0.8, ls=":")
    ax.set(xlabel="position in the window of context", ylabel="perplexity (bins of 16 positions)", yscale="log",
           title="Held-out perplexity against position")
    ax.legend(fontsize=8), ax.grid(alpha=0.3)
    ratio = torch.tensor(attention["ratio"])  # (L, nh)
    layers = torch.arange(ratio.shape[0])
    ax2.bar(layers, ratio.mean(1), color="tab:blue", label="mean over heads")
    ax2.plot(layers, ratio.amax(1), "o", color="tab:red", label="most first-token-heavy head")
    ax2.axhline(1.0, color="k", ls="--", label=uniform_label)
    ax2.set(xlabel="layer", ylabel="weight on token 0 / uniform share", title="Is the first token a sink?",
            xticks=layers.tolist())
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_uptraining(rows: list[dict], k: int = 20):
    """Training loss ({k}-step moving average) against step for each uptraining run of the sweep."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for row in rows:
        loss = torch.tensor(row["train_loss"], dtype=torch.float64)
        smooth = torch.nn.functional.avg_pool1d(loss[None, None], k, stride=1)[0, 0]
        control = "control" in row["label"]  # drawn on top, dashed: the others are read against it
        ax.plot(torch.arange(k, len(loss) + 1), smooth, label=row["label"], color="black" if control else None,
                linestyle="--" if control else "-", linewidth=1.2 if control else 1.5, zorder=3 if control else 2)
    ax.set(xlabel="uptraining step", ylabel=f"training loss (nats, {k}-step mean)",
           title=f"Uptraining on {rows[0]['budget']['machine'].split(',')[0]}")
    ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def summary_points(results: dict, n_layer: int, n_kv_head: int, head_dim: int) -> list[dict]:
    """One point per method: family, name, cache bytes per token at results["context"] tokens (fp16 storage;
    a window holds `window` tokens, a quantized cache codes + fp16 scales and zero points + its fp16 window),
    and the perplexity ratio to the unchanged model on the same windows with ±2 standard errors."""
    T = results["context"]
    mha = 2 * n_layer * n_kv_head * head_dim * 2  # fp16 bytes per token

    def point(family, name, per_token, paired, **extra):
        return {"family": family, "name": name, "bytes_per_token": per_token, "ratio": paired["ratio"],
                "low": paired["ratio_low"], "high": paired["ratio_high"], "mean": paired["mean"], "se": paired["se"],
                **extra}

    zero = {"ratio": 1.0, "ratio_low": 1.0, "ratio_high": 1.0, "mean": 0.0, "se": 0.0}
    points = [point("MHA", "MHA (unchanged)", mha, zero)]
    for r in results["gqa"]:
        name = "MQA" if r["n_kv_head"] == 1 else f"GQA, {r['n_kv_head']} K/V heads"
        points.append(point("GQA/MQA (mean-pooled)", name, mha * r["n_kv_head"] // n_kv_head, r["paired"]))
    for r in results["mla"]:
        latent = latent_cache_bytes(n_layer=n_layer, kv_lora_rank=r["kv_lora_rank"], seq_len=T, dtype=torch.float16)
        points.append(point("MLA (SVD)", f"MLA, r = {r['kv_lora_rank']}", latent // T, r["paired"]))
    for r in results["quant"]:
        if r["key_quant"] == "channel" and r["residual_length"]:
            held = quantized_kv_cache_bytes(n_layer=n_layer, n_kv_head=n_kv_head, head_dim=head_dim, seq_len=T,
                                            nbits=r["nbits"], group_size=r["group_size"],
                                            residual_length=r["residual_length"], dtype=torch.float16)
            points.append(point("quantized (KIVI-style)", f"int{r['nbits']}, window {r['residual_length']}",
                                held / T, r["paired"]))
    w = results["window"]
    for name, r in w["rows"].items():
        points.append(point("window", name, mha * w["window"] / T, r["paired"]))
    for r in results["uptrained"]:
        per_token = {"mha": mha, "gqa": mha * r["n_kv_head"] // n_kv_head,
                     "mla": 2 * n_layer * r["kv_lora_rank"]}[r["kind"]]
        points.append(point("uptrained", f"{r['label']}, uptrained", per_token, r["paired"]))
    return points


# Where plot_summary writes each family's labels (text, offset in points, alignment): clear of the crowd at 256 B.
LABELS = {"MHA": (lambda name: name, (4, 8), "right"),
          "MLA (SVD)": (lambda name: name, (-6, 3), "right"),
          "quantized (KIVI-style)": (lambda name: name.split(",")[0], (0, -10), "center"),
          "window": ("window 64 (with or without 4 sinks)", (6, -10), "left"),
          "uptrained": (lambda name: name.replace(", uptrained", " uptrained"), (-6, -8), "right")}


def plot_summary(points: list[dict], title: str):
    """Perplexity ratio (±2 standard errors) against cache bytes per token, one colour per family."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.2))
    seen = set()
    for p in points:
        color = FAMILY_COLORS[p["family"]]
        hollow = p["family"] == "uptrained"
        ax.errorbar(p["bytes_per_token"], p["ratio"], yerr=[[p["ratio"] - p["low"]], [p["high"] - p["ratio"]]],
                    fmt="o", color=color, mfc="white" if hollow else color, capsize=3, ms=6,
                    label=None if p["family"] in seen else p["family"])
        if p["family"] == "window" and p["family"] in seen:
            continue  # the windows with and without sinks sit on one spot: one label for both
        seen.add(p["family"])
        text, offset, ha = LABELS.get(p["family"], (p["name"], (6, 3), "left"))
        if ha == "right" and p["bytes_per_token"] <= min(q["bytes_per_token"] for q in points):
            offset, ha = (6, 3), "left"  # nothing to the left of the leftmost point: label it on the right
        ax.annotate(text(p["name"]) if callable(text) else text, (p["bytes_per_token"], p["ratio"]),
                    textcoords="offset points", xytext=offset, ha=ha, fontsize=7, color=color)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set(xscale="log", xlabel="cache bytes per token at the full 512-token context (fp16 storage)",
           ylabel="perplexity / unchanged model's (same windows)", title=title)
    ticks = sorted({int(p["bytes_per_token"]) for p in points if math.log2(p["bytes_per_token"]).is_integer()})
    ax.set_xticks(ticks, labels=[f"{t:,}" for t in ticks])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.08, 0.99),
              title="bars: ±2 standard errors (paired over windows)", title_fontsize=8)
    fig.tight_layout()
    return fig
