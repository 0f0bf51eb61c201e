"""kvlib.serving: every request's greedy tokens through the engine equal kvlib.generate on that prompt alone, for any
block size, pool size (with preemption), token budget, arrival order, with and without prefix caching, packed or
padded rows, fast or reference attention; seeded sampling reproduces kvlib.generate's draws; abort, streaming and bad
sampling parameters lose no other request."""
from functools import lru_cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlib
from kvlib.serving import LLMEngine, SamplingParams
from kvlib.serving.sampling import argmax_rows, top_k_top_p_filter
from serving_support import run_engine

# float64: batched and single-request logits differ by ~1e-15, so a greedy tie can never flip a token here.
MODEL = kvlib.random_gpt2(kvlib.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=97),
                          seed=1).double()
SYSTEM = (5, 17, 33, 2, 71, 9, 40, 11, 63, 28)  # a shared "system prompt" prefix


@lru_cache(maxsize=None)
def reference(prompt: tuple, max_new_tokens: int, eos_token_id=None) -> list:
    out = kvlib.generate(MODEL, torch.tensor([prompt]), max_new_tokens, eos_token_id=eos_token_id)[0, len(prompt):]
    tokens = out.tolist()
    return tokens[: tokens.index(eos_token_id) + 1] if eos_token_id in tokens else tokens


request = st.tuples(st.booleans(), st.lists(st.integers(0, 96), min_size=0, max_size=14), st.integers(1, 10))


@settings(max_examples=100, deadline=None)  # at least 100 engine-vs-generate cases in every CI run
@given(reqs=st.lists(request, min_size=1, max_size=5), block_size=st.integers(1, 8), spare=st.integers(0, 12),
       prefix_caching=st.booleans(), budget=st.integers(1, 32), data=st.data(),
       layout=st.sampled_from([("fast", True), ("fast", True), ("split", True), ("online_softmax", True),
                               ("gather", True), (None, False)]))
def test_engine_equals_generate_alone(reqs, block_size, spare, prefix_caching, budget, data, layout):
    requests = [((SYSTEM if shared else ()) + tuple(tail) or (3,), n) for shared, tail, n in reqs]
    arrivals = data.draw(st.lists(st.integers(0, 6), min_size=len(requests), max_size=len(requests)))
    # From a pool that holds only the largest request (preemption on nearly every step) to a roomy one.
    largest = max(-(-(len(p) + n) // block_size) for p, n in requests)
    attention, packed = layout  # packed rows (fast or reference attention), or the padded rows of the first engine
    engine = LLMEngine(MODEL, largest + spare, block_size, enable_prefix_caching=prefix_caching,
                       max_num_batched_tokens=budget, packed_rows=packed, attention=attention or "fast")
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


# -- sampling -------------------------------------------------------------------------------------------------------
def sampled_reference(prompt, n, temperature, top_k, seed):
    g = torch.Generator().manual_seed(seed)
    out = kvlib.generate(MODEL, torch.tensor([prompt]), n, temperature=temperature, top_k=top_k, generator=g)
    return out[0, len(prompt):].tolist()


def test_seeded_sampling_equals_generate_alone_whatever_shares_the_steps():
    prompts = [list(SYSTEM), [3, 4], list(SYSTEM[:5]) + [90]]
    params = [SamplingParams(max_tokens=12, temperature=1.3, seed=11), SamplingParams(max_tokens=9, temperature=0.7,
              top_k=5, seed=12), SamplingParams(max_tokens=7, temperature=2.0, top_k=40, seed=13)]
    want = [sampled_reference(p, sp.max_tokens, sp.temperature, sp.top_k, sp.seed) for p, sp in zip(prompts, params)]
    together = LLMEngine(MODEL, num_blocks=32, block_size=4).generate(prompts, sampling_params=params)
    assert together == want
    engine = LLMEngine(MODEL, num_blocks=32, block_size=4, max_num_batched_tokens=3)  # other chunks, other steps
    for i in (2, 0, 1):
        engine.add_request(prompts[i], sampling_params=params[i])
        engine.step()
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o.token_ids for o in engine.step() if o.finished})
    assert [done[i] for i in range(3)] == [want[2], want[0], want[1]]
    assert len({tuple(t) for t in want}) == 3 and want[0] != reference(tuple(prompts[0]), 12)  # it did sample


def test_top_p_and_greedy_rows_in_one_step():
    prompts = [list(SYSTEM), [3, 4]]
    nucleus = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.5, seed=5)
    alone = LLMEngine(MODEL, num_blocks=32, block_size=4).generate(prompts[:1], sampling_params=[nucleus])
    mixed = LLMEngine(MODEL, num_blocks=32, block_size=4).generate(prompts, [None, 6],
                                                                   sampling_params=[nucleus, None])
    assert mixed == [alone[0], reference(tuple(prompts[1]), 6)]
    tiny = SamplingParams(max_tokens=10, temperature=1.0, top_p=1e-9, seed=5)  # the nucleus is the top token: greedy
    assert LLMEngine(MODEL, num_blocks=32, block_size=4).generate(prompts[:1], sampling_params=[tiny]) == [
        reference(tuple(prompts[0]), 10)]


def test_top_k_top_p_filter_equals_transformers_warpers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 200, generator=torch.Generator().manual_seed(0)) * 3
    for top_k, top_p in ((None, 0.9), (20, 1.0), (20, 0.5), (None, 0.05)):
        want = logits
        if top_k is not None:
            want = TopKLogitsWarper(top_k)(None, want)
        if top_p < 1:
            want = TopPLogitsWarper(top_p)(None, want)
        assert torch.equal(torch.isinf(top_k_top_p_filter(logits, top_k, top_p)), torch.isinf(want))


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 5), vocab=st.integers(1, 300), chunk=st.integers(1, 40), data=st.data())
def test_argmax_rows_equals_torch_argmax(rows, vocab, chunk, data):
    """Ties (few distinct values), infinities and NaN included: the same index as torch.argmax, the first maximum."""
    values = st.sampled_from([0.0, 1.0, 2.0, -1.0, float("inf"), float("-inf"), float("nan")])
    logits = torch.tensor(data.draw(st.lists(values, min_size=rows * vocab, max_size=rows * vocab))).view(rows, vocab)
    assert torch.equal(argmax_rows(logits, chunk), logits.argmax(dim=-1))
    assert torch.equal(argmax_rows(logits.t().contiguous().t(), chunk), logits.argmax(dim=-1))  # rows not contiguous


BAD_SAMPLING = [
    (dict(temperature=-0.5), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_k=-1), ValueError, "vLLM's -1"),
    (dict(max_tokens=0), ValueError, "max_tokens"),
    (dict(seed=-3), ValueError, "seed"),
    (dict(stop_token_ids="7"), TypeError, "stop_token_ids"),
    (dict(top_k=2.5), TypeError, "top_k"),
]


@pytest.mark.parametrize("kwargs,error,words", BAD_SAMPLING)
def test_bad_sampling_parameters_are_refused_and_others_lose_nothing(kwargs, error, words):
    engine = LLMEngine(MODEL, num_blocks=16, block_size=4)
    a = engine.add_request([3, 4, 5], 6)
    engine.step()
    with pytest.raises(error, match=words):
        engine.add_request([9, 8], sampling_params=SamplingParams(**{"max_tokens": 4, **kwargs}))
    with pytest.raises(ValueError, match="stop_token_ids"):
        engine.add_request([9, 8], sampling_params=SamplingParams(stop_token_ids=[500]))
    with pytest.raises(TypeError, match="SamplingParams"):
        engine.add_request([9, 8], sampling_params={"temperature": 0.5})
    with pytest.raises(ValueError, match="differs"):
        engine.add_request([9, 8], 3, sampling_params=SamplingParams(max_tokens=4))
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o.token_ids for o in engine.step() if o.finished})
    assert done == {a: reference((3, 4, 5), 6)} and engine.block_manager.num_used_blocks == 0


def test_stop_token_ids_finish_a_request():
    full = reference(SYSTEM, 10)
    params = SamplingParams(max_tokens=10, stop_token_ids=[full[4], 96])
    out = LLMEngine(MODEL, num_blocks=16, block_size=4).generate([list(SYSTEM)], sampling_params=[params])[0]
    assert out == full[: full.index(full[4]) + 1]


# -- streaming and abort --------------------------------------------------------------------------------------------
def test_each_step_streams_every_running_requests_new_token():
    requests = [(SYSTEM, 7), ((3, 4, 5), 4), ((9,), 9)]
    engine = LLMEngine(MODEL, num_blocks=32, block_size=4)
    ids = [engine.add_request(list(p), n) for p, n in requests]
    streamed = {i: [] for i in ids}
    finished = {}
    while engine.has_unfinished_requests():
        outs = engine.step()
        running = {s.seq_id for s in engine.scheduler.running}
        assert running <= {o.request_id for o in outs}  # every request still running got a token this step
        for o in outs:
            assert len(o.new_token_ids) == 1 and o.token_ids[-1:] == o.new_token_ids
            streamed[o.request_id] += o.new_token_ids
            assert o.token_ids == streamed[o.request_id] and o.finished == (o.request_id not in running)
            if o.finished:
                finished[o.request_id] = o.finish_reason
    assert [streamed[i] for i in ids] == [reference(p, n) for p, n in requests]
    assert finished == {i: "length" for i in ids}


@pytest.mark.parametrize("when", [0, 1, 3])
def test_abort_frees_blocks_and_the_others_lose_nothing(when):
    requests = [(SYSTEM, 8), ((3, 4, 5), 8), ((9, 8, 7, 6, 5), 8), ((1,), 8)]
    engine = LLMEngine(MODEL, num_blocks=12, block_size=4, max_num_seqs=3)  # the last request waits at first
    ids = [engine.add_request(list(p), n) for p, n in requests]
    done = {}
    for _ in range(when):
        done.update({o.request_id: o.token_ids for o in engine.step() if o.finished})
    used = engine.block_manager.num_used_blocks
    held = len(engine._requests[ids[1]].block_table)
    out = engine.abort_request(ids[1])
    assert out.finished and out.finish_reason == "abort" and len(out.token_ids) == when
    assert engine.block_manager.num_used_blocks == used - held
    waiting_out = engine.abort_request(ids[3]) if when < 3 else None  # a waiting request can go too
    with pytest.raises(ValueError, match="not in the engine"):
        engine.abort_request(ids[1])
    while engine.has_unfinished_requests():
        done.update({o.request_id: o.token_ids for o in engine.step() if o.finished})
    kept = [0, 2] + ([3] if waiting_out is None else [])
    assert done == {ids[i]: reference(*requests[i]) for i in kept}
    assert engine.block_manager.num_used_blocks == 0 and engine.stats.num_aborted == 1 + (waiting_out is not None)


NO_COMPILER_RUN = """
import json, warnings, torch, kvlib
from kvlib.serving import LLMEngine
model = kvlib.random_gpt2(kvlib.GPT2Config(n_layer=1, n_head=4, n_embd=32, n_positions=64, vocab_size=97), seed=1)
prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12]]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = LLMEngine(model, num_blocks=16, block_size=4).generate(prompts, 6)
alone = [kvlib.generate(model, torch.tensor([p]), 6)[0, len(p):].tolist() for p in prompts]
print(json.dumps(dict(same=out == alone, warnings=[str(w.message) for w in caught if "kvlib" in str(w.message)])))
"""


def test_engine_without_a_cpp_compiler_falls_back_and_gives_the_same_tokens(tmp_path):
    """CI may run on a machine with no C++ compiler, where torch.compile's CPU backend fails: the engine warns once
    and runs its decode kernel eagerly, with the tokens each request gets alone. A fresh process, so that no kernel
    compiled earlier in this one (or in inductor's disk cache) hides the failure."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    run = subprocess.run([sys.executable, "-c", NO_COMPILER_RUN], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["same"], result
    assert len(result["warnings"]) == 1 and "could not build the paged decode kernel" in result["warnings"][0]
