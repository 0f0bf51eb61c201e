"""kvlib.serving.packed_forward: a packed step (decode rows, prompts, a prompt chunk after a cached prefix, a chunk
that produces no token) gives, for every row that produces a token, the readable model's logits for that request
alone; the prepacked weights equal the plain products; a stale prepacked copy is rebuilt."""
import pytest
import torch

import kvlib
from kvlib.cache.paged import BlockManager, PagedKVCache, Sequence
from kvlib.serving.input_batch import build_packed_batch
from kvlib.serving.packed_forward import PackedGPT2
from kvlib.serving.prepacked import PrepackedLinear

CONFIG = kvlib.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=128, vocab_size=97)
BLOCK = 4


def run_steps(model, steps, *, attention="fast", prepack=True, num_blocks=64):
    """steps: list of {request: (its tokens so far, n)}: feed its next n tokens. Returns, per step,
    the logits of the rows that produced a token, keyed by request, and the readable model's for comparison."""
    w = model.lm_head.weight
    cache = PagedKVCache(model.config, num_blocks, BLOCK, dtype=w.dtype)
    forward = PackedGPT2(model, cache, attention=attention, prepack=prepack)
    bm = BlockManager(num_blocks, BLOCK, enable_prefix_caching=False)
    seqs = {}
    results = []
    for step in steps:
        batch_seqs, counts = [], []
        for rid, (tokens, n) in step.items():
            if rid not in seqs:
                seqs[rid] = Sequence(rid, list(tokens), 1)
                bm.allocate(seqs[rid])
            seqs[rid].token_ids = list(tokens)  # a decode step brings the token sampled after the last one
            assert bm.append_slots(seqs[rid], n)
            batch_seqs.append(seqs[rid])
            counts.append(n)
        batch = build_packed_batch(batch_seqs, counts, BLOCK)
        logits = forward(batch)
        got = {batch_seqs[i].seq_id: logits[j] for j, i in enumerate(batch.sample_rows)}
        for s, n in zip(batch_seqs, counts):
            s.num_computed_tokens += n
        with torch.no_grad():
            want = {rid: model(torch.tensor([seqs[rid].token_ids[:seqs[rid].num_computed_tokens]]))[0, -1]
                    for rid in got}
        results.append((got, want))
    return results


PROMPTS = {0: list(range(1, 12)), 1: list(range(30, 37)), 2: list(range(50, 73)), 3: [5]}
# Step 1: a whole prompt, and the first chunk of a long one (no token). Step 2: a decode row, two new prompts and the
# long prompt's middle chunk after its cached prefix (no token). Step 3: decode rows beside its last chunk.
STEPS = [
    {0: (PROMPTS[0], 11), 2: (PROMPTS[2], 8)},
    {0: (PROMPTS[0] + [7], 1), 1: (PROMPTS[1], 7), 2: (PROMPTS[2], 10), 3: (PROMPTS[3], 1)},
    {0: (PROMPTS[0] + [7, 8], 1), 2: (PROMPTS[2], 5), 3: (PROMPTS[3] + [9], 1)},
]


@pytest.mark.parametrize("attention", ["fast", "gather", "online_softmax"])
@pytest.mark.parametrize("prepack", [True, False])
def test_packed_step_equals_each_request_alone(attention, prepack):
    model = kvlib.random_gpt2(CONFIG, seed=3)
    tol = dict(atol=2e-5, rtol=1e-5)  # fp32: the sums run in another order (and oneDNN's GELU is its own)
    results = run_steps(model, STEPS, attention=attention, prepack=prepack)
    produced = [sorted(got) for got, _ in results]
    assert produced == [[0], [0, 1, 3], [0, 2, 3]]  # request 2's first two chunks produced no token
    for got, want in results:
        for rid in got:
            torch.testing.assert_close(got[rid], want[rid], **tol)
            assert got[rid].argmax() == want[rid].argmax()


def test_packed_step_in_float64_is_exact_to_rounding():
    model = kvlib.random_gpt2(CONFIG, seed=3).double()
    for got, want in run_steps(model, STEPS):
        for rid in got:
            torch.testing.assert_close(got[rid], want[rid], atol=1e-12, rtol=0)


def test_prepacked_linear_equals_addmm_and_follows_weight_changes():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(64, 96, generator=g), torch.randn(96, generator=g)
    x = torch.randn(5, 64, generator=g)
    lin = PrepackedLinear(w, b)
    torch.testing.assert_close(lin(x), torch.addmm(b, x, w), atol=1e-5, rtol=1e-5)
    gelu = PrepackedLinear(w, b, activation="gelu_tanh")
    torch.testing.assert_close(gelu(x), torch.nn.functional.gelu(torch.addmm(b, x, w), approximate="tanh"),
                               atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        w.mul_(2)
    assert lin.version != lin.key()  # stale: the engine's forward rebuilds it before the next step
    lin.refresh()
    torch.testing.assert_close(lin(x), torch.addmm(b, x, w), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="activation"):
        PrepackedLinear(w, b, activation="relu")


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 9])
def test_prepacked_linear_takes_the_nk_layout_up_to_small_rows_and_equals_addmm_on_both_sides(rows, monkeypatch):
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(64, 96, generator=g), torch.randn(96, generator=g)
    x = torch.randn(rows, 64, generator=g)
    lin, gelu = PrepackedLinear(w, b), PrepackedLinear(w, b, activation="gelu_tanh")
    if not lin.fast:
        pytest.skip("oneDNN is not available here")
    onednn = torch.ops.mkldnn._linear_pointwise
    calls = []
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or onednn(*a))
    want = torch.addmm(b, x, w)
    torch.testing.assert_close(lin(x), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gelu(x), torch.nn.functional.gelu(want, approximate="tanh"), atol=1e-5, rtol=1e-5)
    assert len(calls) == (2 if rows > lin.small_rows else 0)  # oneDNN only above SMALL_ROWS rows
    torch.testing.assert_close(lin.weight_nk, w.t())
    head = torch.randn(96, 64, generator=g)  # an (N, K) weight given as its (K, N) view, as the LM head is
    assert PrepackedLinear(head.t(), None).weight_nk.data_ptr() == head.data_ptr()  # no copy
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="small_rows"):
            PrepackedLinear(w, b, small_rows=bad)


def test_forward_sees_weights_changed_after_the_engine_was_built():
    model = kvlib.random_gpt2(CONFIG, seed=3)
    cache = PagedKVCache(CONFIG, 8, BLOCK)
    forward = PackedGPT2(model, cache)
    seq = Sequence(0, [1, 2, 3], 1)
    seq.block_table = [0]
    before = forward(build_packed_batch([seq], [3], BLOCK))
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(3)
    after = forward(build_packed_batch([seq], [3], BLOCK))
    with torch.no_grad():
        want = model(torch.tensor([[1, 2, 3]]))[0, -1]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after[0], want, atol=2e-5, rtol=1e-5)
