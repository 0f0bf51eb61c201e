"""Speculative decoding gives plain greedy decoding's tokens, for every cache kind, γ, drafter and batch, and after
every round each cache (the target's and a draft model's) holds exactly the accepted tokens; bad input gets clear
errors. The distribution test is in test_speculative_sampling.py, the transformers comparison in
test_speculative_hf.py."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlib
from kvlib.model.drafters import Draft, ModelDrafter, PromptLookupDrafter
from kvlib.model.speculative import (acceptance_rate, expected_tokens_per_round, speculative_generate,
                                     speculative_round)

from speculative_support import KINDS, held_keys, new_cache, noisy_copy, plain_greedy, varied_gpt2

CONFIG = kvlib.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=96, vocab_size=97)
TARGET = varied_gpt2(CONFIG, seed=1)
DRAFTERS = {  # name -> a fresh drafter; together they cover no, some and full acceptance
    "lookup": lambda kind: PromptLookupDrafter(2),
    "noisy copy": lambda kind: ModelDrafter(noisy_copy(TARGET, 0.1, seed=5), cache=kind),
    "the target itself": lambda kind: ModelDrafter(TARGET, cache=kind),
    "unrelated": lambda kind: ModelDrafter(varied_gpt2(kvlib.GPT2Config(n_layer=1, n_head=2, n_embd=16,
                                                                         n_positions=96, vocab_size=97), seed=7)),
}


def reference(kind: str, ids: torch.Tensor, n: int) -> torch.Tensor:
    if kind in ("dynamic", "static", "paged"):
        return kvlib.generate(TARGET, ids, n, cache=kind)
    return plain_greedy(TARGET, ids, n, new_cache(kind, TARGET, ids.shape[0], ids.shape[1] + n))


def check_holds_accepted(kind: str, cache, sequence: torch.Tensor, model=TARGET) -> None:
    """The cache holds every token of sequence but the newest, with the K/V an uncached prefill of them computes."""
    assert cache.get_seq_length() == sequence.shape[1] - 1
    fresh = new_cache(kind, model, sequence.shape[0], sequence.shape[1])
    with torch.no_grad():
        model(sequence[:, :-1], fresh)
    for layer in range(model.config.n_layer):
        (held, pos), (want, want_pos) = held_keys(cache, layer), held_keys(fresh, layer)
        assert torch.equal(pos, want_pos)
        # float64: 1e-9 is rounding; a quantized cache differs from a one-shot prefill by its rounding (scale / 2)
        tol = 0.05 * want.abs().max().item() if kind == "quantized" else 1e-9
        assert (held - want).abs().max().item() <= tol, (kind, layer)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(kind=st.sampled_from(KINDS), drafter_name=st.sampled_from(sorted(DRAFTERS)), gamma=st.integers(1, 6),
       batch=st.integers(1, 3), prompt_len=st.integers(1, 14), max_new=st.integers(1, 24), seed=st.integers(0, 99),
       draft_cache=st.sampled_from(("dynamic", "static", "paged")))
def test_greedy_speculative_equals_greedy(kind, drafter_name, gamma, batch, prompt_len, max_new, seed, draft_cache):
    ids = torch.randint(0, 12, (batch, prompt_len), generator=torch.Generator().manual_seed(seed))  # few ids: repeats
    drafter = DRAFTERS[drafter_name](draft_cache)
    cache = new_cache(kind, TARGET, batch, prompt_len + max_new)
    sequence = [ids]

    def after_round(rnd, kv):
        sequence.append(rnd.tokens)
        assert kv is cache
        check_holds_accepted(kind, cache, torch.cat(sequence, dim=1))
        if isinstance(drafter, ModelDrafter) and drafter.cached_ids is not None:  # the draft cache: a prefix, exactly
            drafted = drafter.cached_ids[:, :drafter.cache.get_seq_length()]
            check_holds_accepted(draft_cache, drafter.cache, torch.cat([drafted, drafted[:, -1:]], 1), drafter.model)

    out = speculative_generate(TARGET, ids, max_new, drafter, num_draft_tokens=gamma, cache=cache, on_round=after_round)
    assert torch.equal(out.sequences, reference(kind, ids, max_new))
    assert sum(r.tokens.shape[1] for r in out.rounds) == max_new
    assert all(r.num_drafted <= gamma and min(r.num_accepted) + 1 == r.tokens.shape[1] for r in out.rounds)


def test_each_drafter_covers_its_acceptance():
    """The drafters above do what their names say: the target accepts all its own drafts, few of an unrelated model."""
    ids = torch.randint(0, 12, (1, 8), generator=torch.Generator().manual_seed(0))
    alpha = {name: acceptance_rate(speculative_generate(TARGET, ids, 40, make("dynamic"), num_draft_tokens=4).rounds)
             for name, make in DRAFTERS.items()}
    assert alpha["the target itself"] == 1.0
    assert alpha["unrelated"] < 0.3 < alpha["noisy copy"] < 1.0
    assert 0 < alpha["lookup"] < 1.0


def test_full_acceptance_feeds_the_missing_draft():
    """After a fully accepted round the draft cache is one entry short (its last draft was never fed); the next
    proposal feeds it with the bonus token: two tokens, at their own positions."""
    ids = torch.randint(0, 12, (2, 6), generator=torch.Generator().manual_seed(3))
    drafter = ModelDrafter(TARGET)
    fed = []
    speculative_generate(TARGET, ids, 20, drafter, num_draft_tokens=3,
                         on_round=lambda rnd, cache: fed.append(drafter.last_fed))
    assert fed[0] == 6 and set(fed[1:]) == {2}  # the prompt first; then the last draft and the bonus token


def test_eos_pads_like_generate():
    ids = torch.randint(0, 12, (3, 5), generator=torch.Generator().manual_seed(4))
    plain = kvlib.generate(TARGET, ids, 30)
    eos = int(plain[0, 9])  # a token row 0 emits, so that it finishes early
    want = kvlib.generate(TARGET, ids, 30, eos_token_id=eos)
    got = speculative_generate(TARGET, ids, 30, PromptLookupDrafter(), num_draft_tokens=4, eos_token_id=eos)
    assert torch.equal(got.sequences, want[:, :got.sequences.shape[1]])
    assert (got.sequences[0, 10:] == eos).all()


def test_expected_tokens_per_round():
    assert expected_tokens_per_round(0.0, 4) == 1.0 and expected_tokens_per_round(1.0, 4) == 5.0
    assert expected_tokens_per_round(0.5, 2) == pytest.approx(1.75)  # 1 + 0.5 + 0.25


class NoProbs:
    """A sampling drafter that forgets its probabilities."""

    def propose(self, input_ids, num_tokens, **sampling):
        return Draft(input_ids[:, -1:].repeat(1, num_tokens), None)


@pytest.mark.parametrize("gamma", [0, -1, 1.5, True, None])
def test_gamma_below_one_is_refused(gamma):
    with pytest.raises(ValueError, match="num_draft_tokens"):
        speculative_generate(TARGET, torch.tensor([[1, 2]]), 4, PromptLookupDrafter(), num_draft_tokens=gamma)


def test_bad_drafters_are_refused():
    ids = torch.tensor([[1, 2, 3]])
    other_vocab = kvlib.random_gpt2(kvlib.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=96, vocab_size=50))
    with pytest.raises(ValueError, match="vocabulary of 50 tokens, the target 97"):
        speculative_generate(TARGET, ids, 4, ModelDrafter(other_vocab))
    with pytest.raises(ValueError, match="returned probs=None"):
        speculative_generate(TARGET, ids, 4, NoProbs(), temperature=1.0)
    assert speculative_generate(TARGET, ids, 4, NoProbs()).sequences.shape == (1, 7)  # greedy needs no q
    with pytest.raises(TypeError, match="propose"):
        speculative_generate(TARGET, ids, 4, TARGET)
    with pytest.raises(TypeError, match="kvlib.GPT2"):
        ModelDrafter("gpt2")


def test_caches_that_cannot_roll_back_are_refused():
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(TypeError, match="crop"):
        speculative_generate(TARGET, ids, 4, PromptLookupDrafter(), cache=object())
    short_window = kvlib.QuantizedKVCache(CONFIG, 8, group_size=4, residual_length=3)
    with pytest.raises(ValueError, match="residual_length"):
        speculative_generate(TARGET, ids, 4, PromptLookupDrafter(), num_draft_tokens=3, cache=short_window)
    narrow = kvlib.SlidingWindowKVCache(CONFIG, window=3)
    with pytest.raises(ValueError, match="must fit the window"):
        speculative_generate(TARGET, torch.tensor([[1, 2, 1, 2]]), 6, ModelDrafter(TARGET), num_draft_tokens=4,
                             cache=narrow)
    used = kvlib.DynamicKVCache()
    TARGET(ids, used)
    with pytest.raises(ValueError, match="empty"):
        speculative_generate(TARGET, ids, 4, PromptLookupDrafter(), cache=used)


def test_one_round_by_hand():
    """speculative_round on its own: drafts checked, the cache cropped to every token but the newest."""
    ids = torch.randint(0, 12, (1, 7), generator=torch.Generator().manual_seed(2))
    cache = kvlib.DynamicKVCache()
    with torch.no_grad():
        TARGET(ids[:, :-1], cache)
        rnd = speculative_round(TARGET, ids, cache, ModelDrafter(noisy_copy(TARGET, 0.1, seed=5)), 4)
    assert cache.get_seq_length() == ids.shape[1] + rnd.tokens.shape[1] - 1
    assert torch.equal(torch.cat([ids, rnd.tokens], 1), kvlib.generate(TARGET, ids, rnd.tokens.shape[1]))


def test_prompt_lookup_proposes_what_followed():
    drafter = PromptLookupDrafter(2)
    row = torch.tensor([[5, 6, 7, 8, 9, 5, 6]])
    assert drafter.propose(row, 3).tokens.tolist() == [[7, 8, 9]]  # "5 6" was followed by 7 8 9
    assert drafter.propose(torch.tensor([[1, 2, 3]]), 3).tokens.shape == (1, 0)  # no match: nothing
    batch = drafter.propose(torch.tensor([[5, 6, 7, 5, 6], [1, 2, 3, 4, 5]]), 2).tokens
    assert batch.tolist() == [[7, 5], [5, 5]]  # the row without a match: its last token, repeated
    with pytest.raises(ValueError, match="max_ngram_size"):
        PromptLookupDrafter(0)
