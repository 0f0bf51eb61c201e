"""The outside oracle: transformers' GPT-2 and kvlib's, with the same weights, agree on logits and greedy tokens."""
import pytest
import torch

import kvlib
from tests.conftest import TINY, hf_gpt2

LOGITS_ATOL = 1e-4  # fp32; measured max difference ~4e-6 for GPT-2-small shapes
NEW_TOKENS = 100
CONFIGS = {"tiny": kvlib.GPT2Config(**TINY), "gpt2-small-shapes": kvlib.GPT2Config.from_name("gpt2")}


@pytest.fixture(scope="module", params=[*CONFIGS, "shakespeare"])
def pair(request):
    if request.param == "shakespeare":
        # The trained checkpoint that ships with kvlib, loaded independently by each library from the same files.
        from transformers import GPT2LMHeadModel

        hf = GPT2LMHeadModel.from_pretrained(kvlib.SHAKESPEARE_DIR, dtype=torch.float32).eval()
        return hf, kvlib.load_gpt2("shakespeare")[0]
    hf = hf_gpt2(CONFIGS[request.param])
    return hf, kvlib.GPT2.from_hf(hf)


@pytest.fixture(scope="module")
def prompt(pair):
    hf, _ = pair
    return torch.randint(0, hf.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def hf_greedy(pair, prompt):
    hf, _ = pair
    out = hf.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert out.shape == (1, prompt.shape[1] + NEW_TOKENS)
    return out


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_same_logits_as_transformers(pair, prompt, attn_implementation):
    hf, model = pair
    model.config.attn_implementation = attn_implementation
    try:
        ids = torch.cat([prompt, prompt.flip(1)], dim=0)  # (2, 6): a batch of two prompts
        with torch.no_grad():
            expected = hf(ids).logits
            got = model(ids)
        assert got.shape == expected.shape == (2, 6, hf.config.vocab_size)
        torch.testing.assert_close(got, expected, atol=LOGITS_ATOL, rtol=0)
    finally:
        model.config.attn_implementation = "eager"


def test_same_logits_with_cache_as_transformers_with_cache(pair, prompt):
    hf, model = pair
    from transformers import DynamicCache

    hf_cache, cache = DynamicCache(config=hf.config), kvlib.DynamicKVCache()
    with torch.no_grad():
        for chunk in prompt.split(2, dim=1):  # three 2-token chunks through both caches
            expected = hf(chunk, past_key_values=hf_cache, use_cache=True).logits
            got = model(chunk, cache)
            torch.testing.assert_close(got, expected, atol=LOGITS_ATOL, rtol=0)
    assert cache.get_seq_length() == hf_cache.get_seq_length() == prompt.shape[1]


@pytest.mark.parametrize("kwargs", [dict(use_cache=False), dict(cache="dynamic"), dict(cache="static")],
                         ids=["uncached", "dynamic", "static"])
def test_same_greedy_tokens_as_transformers_generate(pair, prompt, hf_greedy, kwargs):
    _, model = pair
    out = kvlib.generate(model, prompt, NEW_TOKENS, **kwargs)
    assert out.shape == hf_greedy.shape
    assert torch.equal(out, hf_greedy), f"first mismatch at {int((out != hf_greedy).nonzero()[0, 1])}"
