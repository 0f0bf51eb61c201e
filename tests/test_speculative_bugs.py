"""The bug zoo of notebook 09 (kvlib.teaching.spec_bugs): each broken piece is caught by the oracle, the uncached
forward over the same tokens, and the correct piece passes it. On the shipped Shakespeare GPT-2 and its draft model."""
import pytest
import torch

import kvlib
from kvlib.model.drafters import ModelDrafter, load_shakespeare_draft
from kvlib.model.speculative import acceptance_rate
from kvlib.teaching import spec_bugs

TOL = 1e-4  # float32 rounding between a batched verification and an uncached forward is about 1e-5
NEW, GAMMA = 40, 4


@pytest.fixture(scope="module")
def setup():
    target, tokenizer = kvlib.load_gpt2("shakespeare")
    ids = torch.tensor([tokenizer.encode("Is this a dagger which I see before me,")])
    return target, load_shakespeare_draft(), ids, kvlib.generate(target, ids, NEW)


def run(setup, cache=None, drafter=None, **pieces):
    target, draft, ids, _ = setup
    return spec_bugs.checked_speculative_greedy(target, ids, NEW, drafter or ModelDrafter(draft), GAMMA,
                                                cache if cache is not None else kvlib.DynamicKVCache(), **pieces)


def test_the_correct_pieces_pass_the_oracle(setup):
    for cache in (kvlib.DynamicKVCache(), kvlib.StaticKVCache(setup[0].config, 1, 64)):
        out = run(setup, cache)
        assert torch.equal(out.sequences, setup[3])
        assert max(out.target_errors) < TOL and max(out.draft_errors) < TOL
        assert any(min(r.num_accepted) < r.num_drafted for r in out.rounds)  # rollbacks did happen


def test_slicing_a_static_cache(setup):
    """(1) The sliced buffer ends at the write position: the next write has no room. Reallocating instead gives the
    right logits but a new buffer, all of it copied, every round."""
    with pytest.raises(RuntimeError):
        run(setup, kvlib.StaticKVCache(setup[0].config, 1, 64), rollback=spec_bugs.crop_by_slicing)
    moved = []

    def realloc(cache, keep):
        before = cache.key_cache[0].data_ptr()
        spec_bugs.crop_by_reallocating(cache, keep)
        moved.append(cache.key_cache[0].data_ptr() != before)

    out = run(setup, kvlib.StaticKVCache(setup[0].config, 1, 64), rollback=realloc)
    assert max(out.target_errors) < TOL and moved and all(moved)  # right logits, a new buffer every round


def test_positions_advanced_by_one_per_round(setup):
    """(2) transformers #30042: the next verification sits at the wrong positions once a round keeps 2+ tokens."""
    out = run(setup, advance=spec_bugs.advance_by_one)
    assert max(out.target_errors) > 100 * TOL


def test_the_draft_cache_one_short(setup):
    """(3) vLLM #9730: the output stays right (the target checks everything); only the draft model's logits, against
    an uncached draft forward, show it. (vLLM saw acceptance drop; with these two small models it barely moves, so
    acceptance is not asserted.)"""
    bad = run(setup, drafter=spec_bugs.OneShortDrafter(setup[1]))
    assert torch.equal(bad.sequences, setup[3]) and max(bad.target_errors) < TOL
    assert max(bad.draft_errors) > 100 * TOL


def test_resetting_instead_of_rolling_back(setup):
    """(4) aprender #2014: the verification attends to no context, so its logits and the text go wrong. (aprender saw
    acceptance collapse to 1/k; with these two models the context-free target agrees with the drafts more often, not
    less: acceptance is a model-dependent symptom, the oracle is not.)"""
    good, bad = run(setup), run(setup, rollback=spec_bugs.reset_cache)
    assert max(bad.target_errors) > 100 * TOL
    assert not torch.equal(bad.sequences, setup[3])
    assert acceptance_rate(bad.rounds) > acceptance_rate(good.rounds)  # rises here: no collapse to watch for


def test_rewinding_a_wrapped_ring(setup):
    """(5) mlx-swift-lm #424: the position rewound, the overwritten slots not restored: wrong once the ring wraps."""
    def ring():
        return kvlib.SlidingWindowKVCache(setup[0].config, window=8, sink_tokens=2)

    good = run(setup, ring())
    bad = run(setup, ring(), rollback=spec_bugs.rewind_position_only)
    assert max(good.target_errors) < TOL
    assert max(bad.target_errors) > 100 * TOL
