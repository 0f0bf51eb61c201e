"""kvlib.serving.compiled_step: the engine with enforce_eager=False (every step of decode rows only run as one graph
compiled by torch.compile) gives every request the tokens it gets alone, for any block size, pool size (preemption),
token budget and arrival order, one row or many, one block per row or many; its padding row writes only into the
block no request owns; weights frozen into a graph are never those of another model, nor stale ones; a compiler
failure falls back to the eager step with one warning."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlib
from kvlib.serving import LLMEngine
from serving_support import run_engine

CONFIG = kvlib.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=97)
# float64 for the property test: the compiled and eager sums differ by ~1e-15, so no greedy tie can flip a token.
MODEL64 = kvlib.random_gpt2(CONFIG, seed=1).double()
MODEL32 = kvlib.random_gpt2(CONFIG, seed=1)
PROMPTS = [[3, 1, 4], [1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3], [2, 7], [18, 28, 18, 28, 45, 90, 45, 23, 53, 60]]
COUNTS = [12, 5, 20, 1]  # the last rows decode alone: one row, then one row with one block


def alone(model, prompt, n):
    return kvlib.generate(model, torch.tensor([prompt]), n)[0, len(prompt):].tolist()


def compiled_engine(model, num_blocks, block_size, **knobs):
    engine = LLMEngine(model, num_blocks, block_size, enforce_eager=False, **knobs)
    assert engine.model_runner.forward.compiled_decode is not None
    return engine


request = st.tuples(st.lists(st.integers(0, 96), min_size=1, max_size=14), st.integers(1, 10))


@settings(max_examples=25, deadline=None)
@given(requests=st.lists(request, min_size=1, max_size=5), block_size=st.sampled_from([2, 4, 16]),
       spare=st.integers(0, 10), budget=st.integers(1, 32), data=st.data())
def test_compiled_engine_equals_each_request_alone(requests, block_size, spare, budget, data):
    arrivals = data.draw(st.lists(st.integers(0, 6), min_size=len(requests), max_size=len(requests)))
    largest = max(-(-(len(p) + n) // block_size) for p, n in requests)
    engine = compiled_engine(MODEL64, largest + spare, block_size, max_num_batched_tokens=budget)
    assert run_engine(engine, requests, arrivals) == [alone(MODEL64, list(p), n) for p, n in requests]
    assert engine.model_runner.forward.compiled_decode is not None  # it ran compiled, no fallback
    assert engine.block_manager.num_used_blocks == 0


def test_compiled_steps_in_float32_match_the_eager_engine_and_write_the_same_pool():
    """The fast path itself (oneDNN's prepacked products in the graph): same tokens as the eager engine, the same
    K/V in every block a request owns; the padding row wrote only into the block past them."""
    eager, compiled = LLMEngine(MODEL32, 12, 4), compiled_engine(MODEL32, 12, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        assert compiled.generate(PROMPTS, COUNTS) == eager.generate(PROMPTS, COUNTS)
    pools = eager.model_runner.kv_cache, compiled.model_runner.kv_cache
    assert pools[1].num_blocks == pools[0].num_blocks + 1  # the padding block, no request's
    for layer in range(CONFIG.n_layer):
        for a, b in ((pools[0].key_cache[layer], pools[1].key_cache[layer]),
                     (pools[0].value_cache[layer], pools[1].value_cache[layer])):
            torch.testing.assert_close(b[:12], a, atol=1e-5, rtol=1e-5)
    assert pools[1].key_cache[0][12].abs().sum() > 0  # the padding row did write there


def test_each_model_runs_its_own_weights_and_changed_weights_compile_again():
    other = kvlib.random_gpt2(CONFIG, seed=2)  # same shapes, other weights: another graph, not the first one's
    for model in (MODEL32, other):
        assert compiled_engine(model, 12, 4).generate(PROMPTS, COUNTS) == LLMEngine(model, 12, 4).generate(
            PROMPTS, COUNTS)
    engine = compiled_engine(other, 12, 4)
    before = engine.generate(PROMPTS, COUNTS)
    for weight in (other.transformer.h[1].ln_2.weight, other.transformer.h[0].mlp.c_fc.weight):
        with torch.no_grad():
            weight.mul_(3)  # seen first by an eager step (the prompts'), then by the compiled ones
        after = engine.generate(PROMPTS, COUNTS)
        assert after != before and after == [alone(other, p, n) for p, n in zip(PROMPTS, COUNTS)]
        before = after


@pytest.mark.parametrize("knobs,words", [(dict(packed_rows=False), "packed_rows"),
                                         (dict(attention="gather"), "attention must be 'fast'")])
def test_enforce_eager_false_needs_the_packed_fast_path(knobs, words):
    with pytest.raises(ValueError, match=words):
        LLMEngine(MODEL32, 12, 4, enforce_eager=False, **knobs)


NO_COMPILER_RUN = """
import json, warnings, torch, kvlib
from kvlib.serving import LLMEngine
model = kvlib.random_gpt2(kvlib.GPT2Config(n_layer=1, n_head=4, n_embd=32, n_positions=64, vocab_size=97), seed=1)
prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12]]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = LLMEngine(model, num_blocks=16, block_size=4, enforce_eager=False).generate(prompts, 6)
alone = [kvlib.generate(model, torch.tensor([p]), 6)[0, len(p):].tolist() for p in prompts]
print(json.dumps(dict(same=out == alone, warnings=[str(w.message) for w in caught if "kvlib" in str(w.message)])))
"""


def test_compiled_engine_without_a_cpp_compiler_falls_back_and_gives_the_same_tokens(tmp_path):
    """A fresh process with no C++ compiler and an empty inductor cache: one warning for the decode step, the
    tokens each request gets alone."""
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", NO_COMPILER_RUN], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["same"], result
    assert sum("could not build the decode step" in w for w in result["warnings"]) == 1, result["warnings"]
