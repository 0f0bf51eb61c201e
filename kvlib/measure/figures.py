"""What every figure shares: where figures are saved, how the device is named, how a figure is finished."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


FIGURES_DIR = Path(__file__).resolve().parent.parent.parent / "figures"
WRITE_FIGURES_ENV = "KVLIB_WRITE_FIGURES"  # set to 1 to let the notebooks write their figures under figures/


def device_label(device: torch.device | str | None = None) -> str:
    """A short name of the hardware, for titles and file names: the GPU's name, or the CPU model and threads."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def save_figure(fig, name: str, directory: str | Path | None = None) -> Path | None:
    """Save `fig` as <directory>/<name>.png (150 dpi) when asked, and return the path; otherwise return None.

    Asked means: an explicit `directory` (kvlib.measure.bench --out), or the environment variable KVLIB_WRITE_FIGURES=1
    (then figures/<name>.png). Without either nothing is written, so running the notebooks or the tests never
    changes a tracked file; the notebook still shows the figure inline.
    """
    if directory is None:
        if os.environ.get(WRITE_FIGURES_ENV, "") != "1":
            return None
        directory = FIGURES_DIR
    path = Path(directory) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def finish_side_by_side(fig, axes, title: str):
    """A light grid and a small legend on every panel, one title above them: the figure, finished."""
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plain_log_labels(axis) -> None:
    """Log-axis labels as plain numbers (20, not 2×10¹); minor ticks labelled only on short ranges."""
    from matplotlib.ticker import LogFormatter

    axis.set_major_formatter("{x:g}")
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))


def finish_log_plot(fig, ax):
    """Plain y labels on a log axis, a light grid, a small legend, a tight layout: the figure, finished."""
    plain_log_labels(ax.yaxis)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
