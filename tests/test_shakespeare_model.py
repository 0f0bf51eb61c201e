"""The Shakespeare GPT-2 that ships with kvlib: it loads anywhere, transformers reads the same files, it is much
better than a unigram model on works it never saw, and it continues famous lines in real words."""
import json
import math

import pytest
import torch

import kvlib
from kvlib.model import weights
from kvlib.shakespeare import checkpoint, corpus, evaluate

MAX_WEIGHTS_BYTES = 16 * 2**20


@pytest.fixture(scope="module")
def shakespeare_model():
    return kvlib.load_gpt2("shakespeare")


@pytest.fixture(scope="module")
def history():
    return json.loads((kvlib.SHAKESPEARE_DIR / checkpoint.HISTORY_NAME).read_text())


def test_loads_offline_whatever_random_weights_says(shakespeare_model, monkeypatch):
    import os

    assert os.environ["KVLIB_RANDOM_WEIGHTS"] == "1"  # conftest: "no real GPT-2 download" still holds
    model, tokenizer = shakespeare_model
    assert "Shakespeare" in model.weights_source and not model.weights_source.startswith("random")
    assert (model.config.n_layer, model.config.n_head, model.config.n_embd) == (4, 8, 128)
    assert model.config.n_positions >= 512 and model.config.vocab_size == 50257
    assert model.lm_head.weight is model.transformer.wte.weight  # tied head
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.encode("Lionel Messi is a") == [43, 295, 417, 36128, 318, 257]
    monkeypatch.delenv("KVLIB_RANDOM_WEIGHTS")
    again, _ = kvlib.load_gpt2("shakespeare", dtype=torch.float64)
    assert again.lm_head.weight.dtype == torch.float64
    assert torch.equal(again.lm_head.weight.float(), model.lm_head.weight)


def test_unknown_names_list_the_names_that_work():
    with pytest.raises(ValueError, match="'shakespeare' \\(ships with kvlib\\).*gpt2, gpt2-medium"):
        kvlib.load_gpt2("marlowe")


def test_weights_are_small_fp16_inside_the_package():
    path = kvlib.SHAKESPEARE_DIR / weights.WEIGHTS_NAME
    assert path.stat().st_size <= MAX_WEIGHTS_BYTES
    assert kvlib.SHAKESPEARE_DIR.is_relative_to(next(iter(kvlib.__path__)))
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


def test_heldout_perplexity_is_far_below_the_unigram_baseline(shakespeare_model, history):
    model, _ = shakespeare_model
    ids = corpus.heldout_ids()
    # The model card's numbers come from the whole held-out text; recompute on its first 16 windows here.
    ppl = evaluate.perplexity(model, ids[: 16 * 512], context=512)
    assert history["unigram_ppl"] == pytest.approx(659.08, abs=0.01)
    assert ppl < history["unigram_ppl"] / 4, (ppl, history["unigram_ppl"])
    assert history["heldout_ppl"] < history["unigram_ppl"] / 4
    assert math.isclose(ppl, history["heldout_ppl"], rel_tol=0.25)  # a part of the text, not the whole


def test_greedy_continuations_are_real_words(shakespeare_model):
    model, _ = shakespeare_model
    continuations = checkpoint.greedy_continuations(model)
    assert len(continuations) == 5
    for prompt, text in continuations:
        assert len(corpus.words(text)) >= 5, (prompt, text)
        assert corpus.word_coverage(text) >= 0.9, (prompt, text)


def test_model_card_states_the_measured_numbers(history):
    card = (kvlib.SHAKESPEARE_DIR / checkpoint.CARD_NAME).read_text()
    assert f"**{history['heldout_ppl']:.1f}**" in card and f"{history['unigram_ppl']:.1f}" in card
    assert all(w in card for w in corpus.HELDOUT_WORKS)
    assert all(line in card for line in checkpoint.FAMOUS_LINES)
    assert (kvlib.SHAKESPEARE_DIR / "loss_curve.png").is_file()


@pytest.mark.parametrize("kwargs", [dict(use_cache=False), dict(cache="dynamic"), dict(cache="static")],
                         ids=["uncached", "dynamic", "static"])
def test_cached_equals_uncached_on_real_text(shakespeare_model, kwargs):
    model, tokenizer = shakespeare_model
    ids = torch.tensor([tokenizer.encode("To be, or not to be, that is the question:")])
    reference = kvlib.generate(model, ids, 40, use_cache=False)
    assert torch.equal(kvlib.generate(model, ids, 40, **kwargs), reference)
