"""The serving bench on disk: serving_<device>.json (no token lists) and its figure."""
from __future__ import annotations

import json
from pathlib import Path

from ..figures import save_figure


def serving_figure(result: dict):
    """Left: generated tokens/s per method. Right: requests in each step's batch, continuous vs static."""
    import matplotlib.pyplot as plt

    st, co, hf = result["static"], result["continuous"], result["hf"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = ["static batching\n(max-length reservation)", "kvlib continuous\n+ paged"]
    values = [st["tokens_per_s"], co["tokens_per_s"]]
    if hf:
        names.append("transformers\ncontinuous batching")
        values.append(hf["tokens_per_s"])
    bars = a.bar(names, values, color=["tab:gray", "tab:blue", "tab:orange"][:len(values)])
    a.bar_label(bars, fmt="%.1f", fontsize=8)
    a.set_ylim(0, 1.18 * max(values))
    a.set_ylabel("generated tokens / s")
    a.set_title(f"same {len(result['meta']['request_lengths'])} requests, "
                f"{result['meta']['settings']['budget_tokens']} KV slots", fontsize=9)
    a.tick_params(axis="x", labelsize=8)
    b.plot(range(1, len(co["batch_sizes"]) + 1), co["batch_sizes"], label="continuous + paged", color="tab:blue")
    b.axhline(st["batch_size"], color="tab:gray", ls="--", label=f"static: {st['batch_size']} reserved at most")
    b.set_xlabel("engine step")
    b.set_ylabel("requests in the step's batch")
    b.set_title("batch size sustained per step", fontsize=9)
    b.grid(True, alpha=0.3)
    b.legend(fontsize=8)
    fig.suptitle(f"Throughput at a fixed KV budget — {result['meta']['device']}", fontsize=10)
    fig.tight_layout()
    return fig


def write_serving(result: dict, out_dir: str | Path, quick: bool = False) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "serving_cpu" + ("_quick" if quick else "")
    slim = {k: ({kk: vv for kk, vv in v.items() if kk != "outputs"} if isinstance(v, dict) else v)
            for k, v in result.items()}
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(slim, indent=1) + "\n")
    fig = serving_figure(result)
    fig_path = save_figure(fig, f"07_{stem}_throughput", out_dir)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return [path, fig_path]


def load_serving(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
