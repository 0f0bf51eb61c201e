import pytest
import torch
from transformers import GPT2LMHeadModel

import kvlib

TINY = dict(n_layer=2, n_head=4, n_embd=32, n_positions=256, vocab_size=97)


@pytest.fixture
def tiny_config() -> kvlib.GPT2Config:
    return kvlib.GPT2Config(**TINY)


@pytest.fixture
def tiny_model(tiny_config) -> kvlib.GPT2:
    return kvlib.random_gpt2(tiny_config, seed=1)


def hf_gpt2(config: kvlib.GPT2Config, seed: int = 0) -> GPT2LMHeadModel:
    """A transformers GPT-2 with random weights (its own initialisation), eval mode, fp32."""
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config.to_hf()).eval()
