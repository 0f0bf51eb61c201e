"""Figures for the notebooks: each function draws from data it is given and returns the matplotlib Figure.

Figures are saved under figures/ with stable names by `save_figure`; titles name the device where a figure
shows measurements. Every axis carries its unit.
"""
from __future__ import annotations

import platform
from pathlib import Path

import torch

FIGURES_DIR = Path(__file__).resolve().parent.parent / "figures"


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


def save_figure(fig, name: str, directory: str | Path | None = None) -> Path:
    """Save `fig` as figures/<name>.png (150 dpi) and return the path."""
    path = Path(directory or FIGURES_DIR) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path
