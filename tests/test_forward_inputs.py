"""GPT2.forward's optional inputs: each wrong kind or shape gets a clear TypeError/ValueError naming what is
allowed, never an AttributeError/IndexError from deep inside."""
import pytest
import torch

import kvlib

N_POS = 16


@pytest.fixture
def model():
    return kvlib.random_gpt2(kvlib.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=N_POS, vocab_size=97), seed=1)


IDS = torch.arange(10).view(2, 5)  # (B=2, T_new=5)

BAD = [
    (dict(past_key_values=[]), TypeError, "past_key_values"),
    (dict(past_key_values=((torch.zeros(2, 4, 3, 8),) * 2,) * 2), TypeError, "legacy tuple"),
    (dict(past_key_values=torch.zeros(3)), TypeError, "past_key_values"),
    (dict(past_key_values="cache"), TypeError, "past_key_values"),
    (dict(position_ids=torch.arange(5)[None].repeat(3, 1)), ValueError, "position_ids must be"),
    (dict(position_ids=torch.arange(5)[None, None]), ValueError, "position_ids must be"),
    (dict(position_ids=torch.arange(4)[None]), ValueError, "position_ids must be"),
    (dict(position_ids=torch.arange(5.0)[None]), TypeError, "torch.long"),
    (dict(position_ids=torch.arange(-1, 4)[None]), ValueError, "n_positions"),
    (dict(position_ids=torch.arange(N_POS - 2, N_POS + 3)[None]), ValueError, "n_positions"),
    (dict(position_ids=[0, 1, 2, 3, 4]), TypeError, "position_ids"),
    (dict(attention_mask=[[1] * 5] * 2), TypeError, "attention_mask"),
    (dict(attention_mask=torch.ones(5)), ValueError, "attention_mask"),
    (dict(attention_mask=torch.ones(2, 5, 5)), ValueError, "attention_mask"),
    (dict(attention_mask=torch.ones(2, 1, 5, 5)), ValueError, "boolean"),
    (dict(attention_mask=torch.ones(3, 1, 5, 5, dtype=torch.bool)), ValueError, "4-D attention_mask"),
    (dict(attention_mask=torch.ones(2, 3, 5, 5, dtype=torch.bool)), ValueError, "4-D attention_mask"),
    (dict(attention_mask=torch.ones(2, 1, 5, 4, dtype=torch.bool)), ValueError, "4-D attention_mask"),
    (dict(attention_mask=torch.full((2, 5), 2)), ValueError, "only 1"),
    (dict(logits_to_keep=-1), ValueError, "logits_to_keep"),
    (dict(logits_to_keep=1.5), ValueError, "logits_to_keep"),
    (dict(logits_to_keep=True), ValueError, "logits_to_keep"),
]


@pytest.mark.parametrize("kwargs,error,words", BAD, ids=[f"{list(k)[0]}-{i}" for i, (k, _, _) in enumerate(BAD)])
def test_bad_forward_input_is_a_clear_error(model, kwargs, error, words):
    with pytest.raises(error, match=words):
        model(IDS, **kwargs)


def test_good_inputs_still_work(model):
    """The checks refuse nothing that was right: 1-D and broadcast position ids, a 0/1 float mask, a (1, 1, ...) mask."""
    ref = model(IDS)
    assert torch.equal(model(IDS, position_ids=torch.arange(5)), ref)
    assert torch.equal(model(IDS, position_ids=torch.arange(5)[None]), ref)
    assert torch.allclose(model(IDS, attention_mask=torch.ones(2, 5)), ref, atol=1e-6)
    causal = kvlib.causal_mask(5, 5)[None, None]  # (1, 1, 5, 5)
    assert torch.allclose(model(IDS, attention_mask=causal), ref, atol=1e-6)
    assert model(IDS, logits_to_keep=2).shape == (2, 2, 97)


def test_cached_forward_past_n_positions_is_a_value_error(model):
    cache = kvlib.DynamicKVCache()
    model(torch.zeros(1, N_POS - 1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="n_positions"):
        model(torch.zeros(1, 2, dtype=torch.long), cache)
