"""kvlib's checkpoint format: weights as fp16 safetensors in transformers' GPT-2 layout beside a config.json, so
`transformers.GPT2LMHeadModel.from_pretrained(directory)` reads the same directory.

SHAKESPEARE_DIR is the checkpoint that ships inside the package (`kvlib/data/`, so a non-editable install ships
it): the small GPT-2 that kvlib.shakespeare trains. It is data, not code: the library reads it without importing
kvlib.shakespeare.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import GPT2Config
from .gpt2 import GPT2

SHAKESPEARE_DIR = Path(__file__).resolve().parent.parent / "data" / "shakespeare-gpt2"
WEIGHTS_NAME = "model.safetensors"


def save_weights(model: GPT2, out: str | Path) -> None:
    """Write out/model.safetensors (fp16) and out/config.json."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # The head is tied to wte, so like transformers we store wte once and leave lm_head.weight out.
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
               if k != "lm_head.weight"}
    save_file(tensors, out / WEIGHTS_NAME, metadata={"format": "pt"})
    hf_config = model.config.to_hf()
    hf_config.architectures = ["GPT2LMHeadModel"]
    hf_config.save_pretrained(out)


def load(path: str | Path = SHAKESPEARE_DIR, dtype: torch.dtype = torch.float32) -> GPT2:
    """A kvlib GPT2 from a directory written by `save_weights` (or any fp16/fp32 GPT-2 safetensors checkpoint)."""
    from safetensors.torch import load_file
    from transformers import GPT2Config as HFGPT2Config

    path = Path(path)
    if not (path / WEIGHTS_NAME).is_file() or not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no {WEIGHTS_NAME} and config.json")
    config = GPT2Config.from_hf(HFGPT2Config.from_json_file(path / "config.json"))
    model = GPT2(config)
    model.load_hf_state_dict({k: v.to(dtype) for k, v in load_file(path / WEIGHTS_NAME).items()})
    return model.to(dtype).eval()
