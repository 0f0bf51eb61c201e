"""kvlib's speculative decoding against transformers' own assisted generation, on the same weights: the shipped
Shakespeare GPT-2 as the target, its shipped draft model as `assistant_model`, and prompt lookup as
`prompt_lookup_num_tokens`. Greedy, so both must give plain greedy decoding's tokens; they do, token for token."""
import pytest
import torch
from transformers.utils import logging

import kvlib
from kvlib.model.drafters import ModelDrafter, PromptLookupDrafter, load_shakespeare_draft
from kvlib.model.speculative import acceptance_rate, speculative_generate

PROMPTS = ("To be, or not to be, that is the question:", "Now is the winter of our discontent")
NEW = 40


@pytest.fixture(scope="module")
def models():
    logging.set_verbosity_error()
    target, tokenizer = kvlib.load_gpt2("shakespeare")
    draft = load_shakespeare_draft()
    return target, draft, target.to_hf(), draft.to_hf(), tokenizer


def hf_generate(hf, ids, **kwargs):
    return hf.generate(ids, do_sample=False, max_new_tokens=NEW, pad_token_id=50256, eos_token_id=None, **kwargs)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_assistant_model_matches_transformers(models, prompt):
    target, draft, hf_target, hf_draft, tokenizer = models
    ids = torch.tensor([tokenizer.encode(prompt)])
    theirs = hf_generate(hf_target, ids, assistant_model=hf_draft)
    ours = speculative_generate(target, ids, NEW, ModelDrafter(draft), num_draft_tokens=4)
    assert torch.equal(ours.sequences, theirs)
    assert torch.equal(theirs, hf_generate(hf_target, ids))  # and both are plain greedy decoding
    assert 0 < acceptance_rate(ours.rounds) < 1  # the draft model is neither useless nor perfect here


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_lookup_matches_transformers(models, prompt):
    target, _, hf_target, _, tokenizer = models
    ids = torch.tensor([tokenizer.encode(prompt)])
    theirs = hf_generate(hf_target, ids, prompt_lookup_num_tokens=4)
    ours = speculative_generate(target, ids, NEW, PromptLookupDrafter(2), num_draft_tokens=4)
    assert torch.equal(ours.sequences, theirs)
    assert torch.equal(ours.sequences, kvlib.generate(target, ids, NEW))
