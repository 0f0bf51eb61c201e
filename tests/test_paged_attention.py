"""kvlib.cache.paged attention: the online softmax over blocks, block ranges merged by log-sum-exp, and the engine's
fast path, all equal to the gather path (and that to a dense per-row SDPA) for any block size, lengths, query
lengths (decode, prefill, prefill after a cached prefix) and head grouping; the merge's known pitfalls."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kvlib.cache.paged.attention import (gather_paged_attention, merge_attn_states, online_softmax_paged_attention,
                                         query_positions, split_paged_attention)
from kvlib.cache.paged.decode_kernel import compiled_decode_attention, decode_work, paged_decode_attention
from kvlib.cache.paged.fast_attention import gather_decode_attention, paged_attention

FAST = settings(max_examples=40, deadline=None)
TOL = dict(atol=1e-12, rtol=0)  # float64 throughout: only the order of the sums differs


# (K/V heads, query heads per K/V head): MHA, GQA, MQA, all with 4 query heads of 8 (the compiled kernel is built
# once per head layout: the same ones serve every test file)
HEADS = [(4, 1), (2, 2), (1, 4)]


def make_step(block_size, rows, nkv=2, groups=2, hs=8, seed=0):
    """A pool with scattered blocks and rows = [(context_len, query_len), ...]: packed queries and the metadata."""
    g = torch.Generator().manual_seed(seed)
    need = [-(-(c + q) // block_size) for c, q in rows]
    N = sum(need) + 3
    perm = torch.randperm(N, generator=g).tolist()
    W = max(need)
    tables = torch.zeros(len(rows), W, dtype=torch.long)
    for r, n in enumerate(need):
        tables[r, :n] = torch.tensor(perm[sum(need[:r]):sum(need[:r + 1])])
    kc = torch.randn(N, nkv, block_size, hs, generator=g, dtype=torch.float64)  # (N, nkv, S, hs): head-major blocks
    vc = torch.randn(N, nkv, block_size, hs, generator=g, dtype=torch.float64)
    q_lens = torch.tensor([q for _, q in rows])
    query = torch.randn(int(q_lens.sum()), nkv * groups, hs, generator=g, dtype=torch.float64)
    seq_lens = torch.tensor([c + q for c, q in rows])
    starts = torch.cat([torch.zeros(1, dtype=torch.long), q_lens.cumsum(0)])
    return query, kc, vc, tables, seq_lens, starts


def dense_reference(query, kc, vc, tables, seq_lens, starts):
    """Each row alone: its keys listed slot by slot, PyTorch's SDPA with the offset causal mask."""
    nkv, S, hs = kc.shape[1:]
    nh = query.shape[1]
    outs = []
    for r in range(len(seq_lens)):
        L, a, b = int(seq_lens[r]), int(starts[r]), int(starts[r + 1])
        k = torch.stack([kc[int(tables[r, p // S]), :, p % S] for p in range(L)])  # (L, nkv, hs), token by token
        v = torch.stack([vc[int(tables[r, p // S]), :, p % S] for p in range(L)])
        k, v = (t.repeat_interleave(nh // nkv, 1).transpose(0, 1) for t in (k, v))  # (nh, L, hs)
        mask = torch.arange(L)[None] <= torch.arange(L - (b - a), L)[:, None]  # (q, L)
        outs.append(F.scaled_dot_product_attention(query[a:b].transpose(0, 1), k, v, attn_mask=mask).transpose(0, 1))
    return torch.cat(outs)


rows_strategy = st.lists(st.tuples(st.integers(0, 40), st.integers(1, 9)), min_size=1, max_size=5)


@FAST
@given(block_size=st.integers(1, 9), rows=rows_strategy, heads=st.sampled_from(HEADS), per_split=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_every_path_equals_the_dense_reference(block_size, rows, heads, per_split, seed):
    nkv, groups = heads
    step = make_step(block_size, rows, nkv, groups, seed=seed)
    ref = dense_reference(*step)
    out, lse = gather_paged_attention(*step)
    torch.testing.assert_close(out, ref, **TOL)
    for o, l in (online_softmax_paged_attention(*step), split_paged_attention(*step, blocks_per_split=per_split)):
        torch.testing.assert_close(o, ref, **TOL)
        torch.testing.assert_close(l, lse, **TOL)
    query, kc, vc, tables, seq_lens, starts = step
    q_lens = (starts[1:] - starts[:-1]).tolist()
    order = sorted(range(len(rows)), key=lambda r: q_lens[r] != 1)  # the engine's layout: decode rows first
    packed = torch.cat([query[starts[r]:starts[r + 1]] for r in order])
    new_slots = []
    for r in order:
        c, q = rows[r]
        new_slots += [int(tables[r, p // block_size]) * block_size + p % block_size for p in range(c, c + q)]
    new_slots = torch.tensor(new_slots)
    block, offset = new_slots // block_size, new_slots % block_size
    key, value = kc[block, :, offset], vc[block, :, offset]
    ql = [q_lens[r] for r in order]
    with torch.inference_mode():
        fast = paged_attention(packed, key, value, kc, vc, tables[order], seq_lens[order],
                               torch.tensor([0] + ql).cumsum(0), num_decode_rows=ql.count(1), query_lens=ql,
                               context_lens=[rows[r][0] for r in order])
    torch.testing.assert_close(fast, torch.cat([ref[starts[r]:starts[r + 1]] for r in order]), **TOL)


@FAST
@given(block_size=st.integers(1, 17), lens=st.lists(st.integers(1, 120), min_size=1, max_size=6),
       heads=st.sampled_from(HEADS), seed=st.integers(0, 2**16))
def test_decode_kernels_equal_the_gather(block_size, lens, heads, seed):
    nkv, groups = heads
    query, kc, vc, tables, seq_lens, starts = make_step(block_size, [(n - 1, 1) for n in lens], nkv, groups, seed=seed)
    ref = gather_paged_attention(query, kc, vc, tables, seq_lens, starts)[0]
    work = decode_work(tables, seq_lens, block_size)
    assert len(work.block) == sum(-(-n // block_size) for n in lens)  # one item per block holding keys: no padding
    with torch.inference_mode():  # as the engine calls it (and one compilation serves every case)
        for kernel in (compiled_decode_attention, paged_decode_attention):
            torch.testing.assert_close(kernel(query, kc, vc, seq_lens, work), ref, **TOL)
        torch.testing.assert_close(gather_decode_attention(query, kc, vc, tables, seq_lens), ref, **TOL)


def test_log_sum_exp_is_the_natural_one_of_the_scores():
    query, kc, vc, tables, seq_lens, starts = make_step(4, [(9, 1), (0, 3)])  # 2 K/V heads, 2 queries each
    _, lse = online_softmax_paged_attention(query, kc, vc, tables, seq_lens, starts)
    _, pos = query_positions(seq_lens, starts)
    row = torch.repeat_interleave(torch.arange(2), starts[1:] - starts[:-1])
    for t in range(len(query)):
        r, L = int(row[t]), int(pos[t]) + 1
        k = torch.stack([kc[int(tables[r, p // 4]), :, p % 4] for p in range(L)]).repeat_interleave(2, 1)  # (L, nh, hs)
        scores = torch.einsum("hd,lhd->hl", query[t], k) / math.sqrt(8)
        torch.testing.assert_close(lse[t], torch.logsumexp(scores, dim=-1), **TOL)


def test_merge_of_two_empty_partitions_is_empty_not_nan():
    out, lse = torch.zeros(3, 4), torch.full((3,), float("-inf"))
    m = torch.maximum(lse, lse)
    naive = torch.exp(lse - m)  # the textbook merge: e^(-inf - (-inf))
    assert torch.isnan(naive).all()  # the pitfall (flashinfer #4051)
    merged, merged_lse = merge_attn_states(out, lse, out, lse)
    assert torch.equal(merged, out) and torch.equal(merged_lse, lse)  # out 0, lse -inf: not NaN, not +inf


def test_merge_with_one_empty_side_returns_the_other_exactly():
    out, lse = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    empty_out, empty_lse = torch.zeros(5, 8, dtype=torch.float64), torch.full((5,), float("-inf"), dtype=torch.float64)
    for merged, merged_lse in (merge_attn_states(out, lse, empty_out, empty_lse),
                               merge_attn_states(empty_out, empty_lse, out, lse)):
        assert torch.equal(merged, out) and torch.equal(merged_lse, lse)


def test_ranges_past_a_short_rows_end_leave_no_nan():
    # One row of 2 tokens beside one of 60, blocks of 2, one block per range: the short row's ranges 1..29 are empty.
    step = make_step(2, [(1, 1), (59, 1)])
    out, lse = split_paged_attention(*step, blocks_per_split=1)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    torch.testing.assert_close(out, gather_paged_attention(*step)[0], **TOL)


def test_a_base_two_log_sum_exp_must_be_converted_before_merging():
    """FlashInfer's log-sum-exps are base 2 (flash-attn's and kvlib's natural): merged as if natural, the weights are
    wrong; converted (x ln 2), they are right."""
    query, kc, vc, tables, seq_lens, starts = make_step(4, [(23, 1)])
    whole = gather_paged_attention(query, kc, vc, tables, seq_lens, starts)[0]
    a = online_softmax_paged_attention(query, kc, vc, tables, seq_lens, starts, last_block=3)
    b = online_softmax_paged_attention(query, kc, vc, tables, seq_lens, starts, first_block=3)
    base2 = [(o, lse / math.log(2)) for o, lse in (a, b)]  # what a base-2 kernel would hand over
    wrong = merge_attn_states(*base2[0], *base2[1])[0]
    right = merge_attn_states(base2[0][0], base2[0][1] * math.log(2), base2[1][0], base2[1][1] * math.log(2))[0]
    torch.testing.assert_close(right, whole, **TOL)
    assert (wrong - whole).abs().max() > 1e-3


def test_references_refuse_mismatched_inputs():
    query, kc, vc, tables, seq_lens, starts = make_step(4, [(3, 1)])
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        gather_paged_attention(query[:, :3], kc, vc, tables, seq_lens, starts)
    with pytest.raises(ValueError, match="query_start_loc"):
        online_softmax_paged_attention(query, kc, vc, tables, seq_lens, starts[:1])
    with pytest.raises(ValueError, match="blocks_per_split"):
        split_paged_attention(query, kc, vc, tables, seq_lens, starts, blocks_per_split=0)
    with pytest.raises(ValueError, match="backend"):
        paged_attention(query, query, query, kc, vc, tables, seq_lens, starts, num_decode_rows=1, query_lens=[1],
                        context_lens=[3], backend="flash")


def test_fast_decode_falls_back_to_the_eager_kernel_once_compilation_fails(monkeypatch):
    """A machine without a C++ compiler cannot build the compiled kernel: one warning, then the same function run
    eagerly, with the gather's result."""
    from kvlib.cache.paged import decode_kernel

    def no_compiler(*args):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
    monkeypatch.setattr(decode_kernel, "compiled_decode_attention", no_compiler)
    monkeypatch.setattr(decode_kernel, "_compile_failed", None)
    query, kc, vc, tables, seq_lens, starts = make_step(4, [(9, 1), (30, 1), (0, 1)])
    ref = gather_paged_attention(query, kc, vc, tables, seq_lens, starts)[0]
    work = decode_work(tables, seq_lens, 4)
    with pytest.warns(RuntimeWarning, match="could not build the paged decode kernel.*C\\+\\+ compiler"):
        torch.testing.assert_close(decode_kernel.fast_decode_attention(query, kc, vc, seq_lens, work), ref, **TOL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the second step falls back silently
        torch.testing.assert_close(decode_kernel.fast_decode_attention(query, kc, vc, seq_lens, work), ref, **TOL)
