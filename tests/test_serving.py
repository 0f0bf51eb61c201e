"""kvlib.serving: every request's greedy tokens through the engine equal kvlib.generate on that prompt alone, for any
block size, pool size (with preemption), token budget, arrival order, with and without prefix caching."""
from functools import lru_cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlib
from kvlib.serving import LLMEngine

# float64: batched and single-request logits differ by ~1e-15, so a greedy tie can never flip a token here.
MODEL = kvlib.random_gpt2(kvlib.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=97),
                          seed=1).double()
SYSTEM = (5, 17, 33, 2, 71, 9, 40, 11, 63, 28)  # a shared "system prompt" prefix


@lru_cache(maxsize=None)
def reference(prompt: tuple, max_new_tokens: int, eos_token_id=None) -> list:
    out = kvlib.generate(MODEL, torch.tensor([prompt]), max_new_tokens, eos_token_id=eos_token_id)[0, len(prompt):]
    tokens = out.tolist()
    return tokens[: tokens.index(eos_token_id) + 1] if eos_token_id in tokens else tokens


def run_engine(engine, requests, arrivals):
    """Add request i at step arrivals[i]; step until all finish; return the generated tokens in request order."""
    order = sorted(range(len(requests)), key=lambda i: arrivals[i])
    ids, done, step = {}, {}, 0
    while order or engine.has_unfinished_requests():
        while order and arrivals[order[0]] <= step:
            i = order.pop(0)
            ids[engine.add_request(list(requests[i][0]), requests[i][1])] = i
        for out in engine.step():
            done[ids[out.request_id]] = out.token_ids
        step += 1
        assert step < 2000, "the engine stopped making progress"
    return [done[i] for i in range(len(requests))]


request = st.tuples(st.booleans(), st.lists(st.integers(0, 96), min_size=0, max_size=14), st.integers(1, 10))


@settings(max_examples=100, deadline=None)  # at least 100 engine-vs-generate cases in every CI run
@given(reqs=st.lists(request, min_size=1, max_size=5), block_size=st.integers(1, 8), spare=st.integers(0, 12),
       prefix_caching=st.booleans(), budget=st.integers(1, 32), data=st.data())
def test_engine_equals_generate_alone(reqs, block_size, spare, prefix_caching, budget, data):
    requests = [((SYSTEM if shared else ()) + tuple(tail) or (3,), n) for shared, tail, n in reqs]
    arrivals = data.draw(st.lists(st.integers(0, 6), min_size=len(requests), max_size=len(requests)))
    # From a pool that holds only the largest request (preemption on nearly every step) to a roomy one.
    largest = max(-(-(len(p) + n) // block_size) for p, n in requests)
    engine = LLMEngine(MODEL, largest + spare, block_size, enable_prefix_caching=prefix_caching,
                       max_num_batched_tokens=budget)
    assert run_engine(engine, requests, arrivals) == [reference(p, n) for p, n in requests]
    bm = engine.block_manager
    assert bm.num_used_blocks == 0 and bm.num_free_blocks == bm.num_blocks  # every block came back


def test_preemption_happens_and_loses_nothing():
    requests = [(SYSTEM + (i,), 20) for i in range(4)]
    engine = LLMEngine(MODEL, num_blocks=8, block_size=4, enable_prefix_caching=False)
    assert run_engine(engine, requests, [0] * 4) == [reference(p, n) for p, n in requests]
    assert engine.stats.num_preemptions > 0


def test_prefix_caching_computes_the_shared_prompt_once():
    requests = [(SYSTEM * 2 + (i, i + 1), 4) for i in range(6)]  # 22-token prompts sharing 20 tokens
    counts = {}
    for caching in (False, True):
        engine = LLMEngine(MODEL, num_blocks=64, block_size=4, enable_prefix_caching=caching)
        assert run_engine(engine, requests, list(range(6))) == [reference(p, n) for p, n in requests]
        counts[caching] = engine.stats.num_computed_prompt_tokens
    assert counts[False] == 6 * 22
    assert counts[True] == 22 + 5 * (22 - 20)  # later requests reuse 5 full blocks of 4 = 20 tokens


def test_full_prompt_hit_still_computes_a_token():
    prompt = SYSTEM[:8]  # two full blocks of 4
    engine = LLMEngine(MODEL, num_blocks=16, block_size=4)
    assert engine.generate([list(prompt)], 5) == [reference(prompt, 5)]
    assert engine.generate([list(prompt)], 5) == [reference(prompt, 5)]
    assert engine.stats.num_computed_prompt_tokens == 8 + 4  # the second time: the last block is recomputed


def test_eos_stops_a_request_early():
    prompt = SYSTEM
    full = reference(prompt, 10)
    eos = full[3]
    engine = LLMEngine(MODEL, num_blocks=16, block_size=4)
    rid = engine.add_request(list(prompt), 10, eos_token_id=eos)
    outs = [o for _ in range(30) for o in engine.step()]
    assert [o.request_id for o in outs] == [rid] and outs[0].token_ids == reference(prompt, 10, eos)
    assert outs[0].token_ids[-1] == eos and len(outs[0].token_ids) <= 4


def test_fp32_engine_matches_generate(tiny_model):
    prompts = [list(range(1, 1 + n)) for n in (3, 11, 7)]
    engine = LLMEngine(tiny_model, num_blocks=12, block_size=4)
    got = engine.generate(prompts, [15, 6, 12])
    ref = [kvlib.generate(tiny_model, torch.tensor([p]), n)[0, len(p):].tolist() for p, n in zip(prompts, [15, 6, 12])]
    assert got == ref


@pytest.mark.parametrize("num_blocks,block_size", [(0, 4), (4, 0), (-1, 4), (4, -8)])
def test_engine_sizes_must_be_positive(num_blocks, block_size):
    with pytest.raises(ValueError, match="positive"):
        LLMEngine(MODEL, num_blocks, block_size)


BAD_REQUESTS = [
    (([], 4), ValueError, "empty prompt"),
    (([1] * 60, 5), ValueError, "n_positions"),
    (([1] * 30, 5), ValueError, "pool is too small"),  # 35 tokens need 9 blocks of 4; the pool has 8
    (([1, 200], 4), ValueError, r"\[0, 97\)"),
    (([1, 2], 0), ValueError, "max_new_tokens"),
    ((["a"], 4), TypeError, "list of int"),
]


@pytest.mark.parametrize("bad,error,words", BAD_REQUESTS)
def test_bad_request_is_refused_and_others_lose_nothing(bad, error, words):
    engine = LLMEngine(MODEL, num_blocks=8, block_size=4)
    good = [((3, 4, 5), 6), ((9, 8), 5)]
    a = engine.add_request(list(good[0][0]), good[0][1])
    engine.step()
    with pytest.raises(error, match=words):
        engine.add_request(*bad)
    b = engine.add_request(list(good[1][0]), good[1][1])
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o.token_ids for o in engine.step()})
    assert done == {a: reference(*good[0]), b: reference(*good[1])}
