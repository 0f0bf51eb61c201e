"""kvlib.cache.paged: the block allocator and prefix cache (no tensors), and PagedKVCache against the contiguous caches."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlib
from kvlib.cache.paged import BlockManager, PagedKVCache, Sequence
from kvlib.measure.allocation import cache_storage_bytes

FAST = settings(max_examples=25, deadline=None)
MODEL = kvlib.random_gpt2(kvlib.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=256, vocab_size=97), seed=1)


def seq(seq_id, tokens, max_new=4):
    return Sequence(seq_id, list(tokens), max_new)


# -- BlockManager ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [dict(num_blocks=0, block_size=4), dict(num_blocks=4, block_size=0),
                                    dict(num_blocks=-1, block_size=4), dict(num_blocks=4, block_size=-2)])
def test_sizes_must_be_positive(kwargs):
    with pytest.raises(ValueError, match="positive"):
        BlockManager(**kwargs)


def test_allocate_grow_free():
    bm = BlockManager(num_blocks=4, block_size=4, enable_prefix_caching=False)
    s = seq(0, range(6))
    bm.allocate(s)
    assert bm.append_slots(s, 6) and len(s.block_table) == 2  # 6 tokens: 2 blocks of 4
    s.num_computed_tokens = 6
    assert bm.append_slots(s, 2) and len(s.block_table) == 2  # slots 7 and 8 fit in the second block
    s.num_computed_tokens = 8
    assert bm.append_slots(s, 1) and len(s.block_table) == 3  # the 9th token opens a block
    assert (bm.num_free_blocks, bm.num_used_blocks) == (1, 3)
    bm.check_invariants([s])
    assert not bm.append_slots(s, 9) and len(s.block_table) == 3  # too few free: nothing taken
    bm.free(s)
    assert (bm.num_free_blocks, bm.num_used_blocks, s.block_table) == (4, 0, [])
    bm.check_invariants()


def test_double_free_is_an_error():
    bm = BlockManager(num_blocks=2, block_size=4)
    s = seq(0, range(3))
    bm.allocate(s)
    bm.append_slots(s, 3)
    block = s.block_table[0]
    bm.free(s)
    with pytest.raises(RuntimeError, match="freed twice"):
        bm.release(block)
    assert bm.ref_counts == [0, 0]


def _computed(bm, s):
    """Pretend the model computed every token of s (so its full blocks are cached)."""
    bm.allocate(s)
    assert bm.append_slots(s, s.num_uncomputed_tokens)
    s.num_computed_tokens = s.num_tokens
    bm.cache_computed_blocks(s)


def test_prefix_hit_shares_blocks_and_always_leaves_a_token_to_compute():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(0, range(10))
    _computed(bm, a)  # blocks 0..3, 4..7 full and cached; 8, 9 in a partial block
    b = seq(1, [*range(8), 50, 51])
    bm.allocate(b)
    assert b.block_table == a.block_table[:2] and b.num_computed_tokens == 8  # two full blocks reused
    assert [bm.ref_counts[x] for x in a.block_table[:2]] == [2, 2]
    c = seq(2, range(8))  # the whole prompt is cached: its last block is not taken, the last token is computed
    bm.allocate(c)
    assert c.num_computed_tokens == 4 and c.num_uncomputed_tokens == 4
    bm.check_invariants([a, b, c])


def test_hash_collision_never_returns_another_prefix():
    bm = BlockManager(num_blocks=8, block_size=2, hash_fn=lambda parent, tokens: 7)  # every block collides
    a = seq(0, [1, 2, 3, 4, 5])
    _computed(bm, a)
    b = seq(1, [9, 9, 3, 4, 5])
    bm.allocate(b)
    assert b.block_table == [] and b.num_computed_tokens == 0  # the token comparison refuses the hit


def test_freed_cached_blocks_stay_reusable_until_evicted_lru():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = seq(0, [1, 2, 3, 4, 5])
    _computed(bm, a)
    bm.free(a)
    assert bm.num_free_blocks == 4 and bm.num_cached_free_blocks == 2
    b = seq(1, [1, 2, 3, 4, 6])
    bm.allocate(b)
    assert b.num_computed_tokens == 4  # reused after a's end
    bm.free(b)
    # Fill the pool with other tokens: the least recently freed blocks go first, the cached prefix last.
    c = seq(2, [7] * 4)
    bm.allocate(c)
    bm.append_slots(c, 4)
    assert bm.num_evictions == 0 and bm.num_cached_free_blocks == 2
    d = seq(3, [8] * 3)
    bm.allocate(d)
    bm.append_slots(d, 3)
    assert bm.num_evictions == 2 and bm.hash_to_block == {}
    bm.check_invariants([c, d])


@FAST
@given(st.integers(1, 5), st.lists(st.tuples(st.integers(0, 3), st.integers(1, 12)), min_size=1, max_size=30))
def test_random_allocations_keep_the_invariants(block_size, ops):
    """Any order of admit / grow / finish keeps free + in use == num_blocks and reference counts == tables."""
    bm = BlockManager(num_blocks=12, block_size=block_size)
    live: list[Sequence] = []
    for i, (op, n) in enumerate(ops):
        if op == 0 or not live:
            s = seq(i, [t % 3 for t in range(n)])  # few distinct tokens: many shared prefixes
            bm.allocate(s)
            if bm.append_slots(s, s.num_uncomputed_tokens):
                s.num_computed_tokens = s.num_tokens
                bm.cache_computed_blocks(s)
                live.append(s)
            else:
                bm.free(s)
        elif op in (1, 2):
            s = live[n % len(live)]
            s.append_token(n % 3)
            if bm.append_slots(s, 1):
                s.num_computed_tokens += 1
                bm.cache_computed_blocks(s)
        else:
            bm.free(live.pop(n % len(live)))
        bm.check_invariants(live)
        for s in live:  # every held prefix block holds exactly the tokens the sequence has there
            for j, b in enumerate(s.block_table[: s.num_computed_tokens // block_size]):
                prefix = bm.block_prefix[b]
                assert prefix is None or prefix == tuple(s.token_ids[: (j + 1) * block_size])


# -- PagedKVCache ---------------------------------------------------------------------------------------------------
def test_paged_cache_sizes_must_be_positive(tiny_config):
    for nb, bs in ((0, 4), (4, 0), (-3, 4)):
        with pytest.raises(ValueError, match="positive"):
            PagedKVCache(tiny_config, nb, bs)


def test_pool_layout_holds_n_kv_head_heads(tiny_config):
    cache = PagedKVCache(tiny_config, num_blocks=5, block_size=3)
    assert cache.key_cache[0].shape == (5, tiny_config.n_kv_head, 3, tiny_config.head_dim)  # (N, nkv, S, hs)
    assert cache.nbytes_allocated == 2 * tiny_config.n_layer * 5 * 3 * tiny_config.n_embd * 4


def test_every_layer_lives_in_one_pool_tensor(tiny_config):
    """key_cache[i] and value_cache[i] are kv_pool[0, i] and kv_pool[1, i]: one allocation, nothing more."""
    L, nkv, hs = tiny_config.n_layer, tiny_config.n_kv_head, tiny_config.head_dim
    cache = PagedKVCache(tiny_config, num_blocks=5, block_size=3)
    assert cache.kv_pool.shape == (2, L, 5, nkv, 3, hs)  # (2, L, N, nkv, S, hs)
    cache.value_cache[L - 1][4, nkv - 1, 2] = 7.0
    cache.key_cache[0][1, 0, 0] = -1.0
    assert (cache.kv_pool[1, L - 1, 4, nkv - 1, 2] == 7).all() and (cache.kv_pool[0, 0, 1, 0, 0] == -1).all()
    assert cache_storage_bytes(cache) == cache.kv_pool.nbytes == cache.nbytes_allocated


def test_a_slot_is_a_block_and_an_offset_in_every_head():
    """Slot b * S + o: block b, offset o, the same offset in each head's run (the head-major layout)."""
    from kvlib.cache.paged.layout import read_slots, write_slots
    N, nkv, S, hs = 4, 3, 5, 2
    pool = torch.zeros(N, nkv, S, hs)
    slots = torch.tensor([17, 3, 9])  # block 3 offset 2, block 0 offset 3, block 1 offset 4
    states = torch.arange(3 * nkv * hs, dtype=torch.float32).view(3, nkv, hs)
    write_slots(pool, slots, states)
    assert torch.equal(pool[3, :, 2], states[0]) and torch.equal(pool[0, :, 3], states[1])
    assert torch.equal(pool[1, :, 4], states[2]) and int((pool != 0).sum()) == 3 * nkv * hs - 1  # states has one 0
    assert torch.equal(read_slots(pool, slots.view(1, 3)), states[None])  # (*slots.shape, nkv, hs)


def test_writing_one_layer_of_the_whole_pool_equals_writing_its_k_and_v_pools():
    from kvlib.cache.paged.layout import write_layer_slots, write_slots
    L, N, nkv, S, hs = 3, 4, 3, 5, 2
    kv_pool, want = torch.zeros(2, L, N, nkv, S, hs), torch.zeros(2, L, N, nkv, S, hs)
    slots, k, v = torch.tensor([17, 3, 9]), torch.randn(3, nkv, hs), torch.randn(3, nkv, hs)
    write_layer_slots(kv_pool, 1, slots, k, v)
    write_slots(want[0, 1], slots, k)
    write_slots(want[1, 1], slots, v)
    assert torch.equal(kv_pool, want)


@pytest.mark.parametrize("batch", [1, 3])
def test_generate_paged_equals_dynamic_and_static(tiny_model, batch):
    ids = torch.randint(0, 97, (batch, 9), generator=torch.Generator().manual_seed(batch))
    ref = kvlib.generate(tiny_model, ids, 40, cache="dynamic")
    assert torch.equal(kvlib.generate(tiny_model, ids, 40, cache="paged"), ref)
    assert torch.equal(kvlib.generate(tiny_model, ids, 40, cache="static"), ref)


def test_generate_paged_with_left_padding(tiny_model):
    ids = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])
    ref = kvlib.generate(tiny_model, ids, 20, cache="dynamic", attention_mask=mask)
    assert torch.equal(kvlib.generate(tiny_model, ids, 20, cache="paged", attention_mask=mask), ref)


def test_paged_cache_used_alone_runs_out_with_a_clear_error(tiny_model):
    cache = PagedKVCache(tiny_model.config, num_blocks=2, block_size=4)
    tiny_model(torch.zeros(1, 8, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="out of blocks"):
        tiny_model(torch.zeros(1, 1, dtype=torch.long), cache)


@FAST
@given(block_size=st.integers(1, 9), lens=st.lists(st.tuples(st.integers(0, 20), st.integers(1, 8)), min_size=1,
                                                    max_size=4), seed=st.integers(0, 2**16))
def test_uneven_rows_in_one_forward_equal_each_row_alone(block_size, lens, seed):
    """Rows with different cached lengths and new-token counts, blocks scattered over the pool, in one forward:
    each row's logits equal that row run alone through a DynamicKVCache (fp32, atol 1e-5)."""
    tiny_model = MODEL
    g = torch.Generator().manual_seed(seed)
    need = [-(-(c + q) // block_size) for c, q in lens]
    perm = torch.randperm(sum(need) + 3, generator=g).tolist()  # scattered, non-contiguous block ids
    tables = [perm[sum(need[:r]):sum(need[:r + 1])] for r in range(len(lens))]
    cache = PagedKVCache(tiny_model.config, num_blocks=sum(need) + 3, block_size=block_size)
    seqs = [torch.randint(0, 97, (1, c + q), generator=g) for c, q in lens]
    refs = []
    with torch.no_grad():
        for s, (c, q) in zip(seqs, lens):
            dyn = kvlib.DynamicKVCache()
            if c:
                tiny_model(s[:, :c], dyn)
            refs.append(tiny_model(s[:, c:], dyn)[0])  # (q, V)
        # Fill each row's cached part (prefill through the paged cache), then the new tokens, all rows at once.
        pre = [(r, c) for r, (c, _) in enumerate(lens) if c]
        if pre:
            cache.prepare([tables[r] for r, _ in pre], [0] * len(pre), [c for _, c in pre])
            T = max(c for _, c in pre)
            ids = torch.zeros(len(pre), T, dtype=torch.long)
            for i, (r, c) in enumerate(pre):
                ids[i, T - c:] = seqs[r][0, :c]
            tiny_model(ids, cache, attention_mask=cache.attention_mask(), position_ids=cache.position_ids())
        cache.prepare(tables, [c for c, _ in lens], [q for _, q in lens])
        T = max(q for _, q in lens)
        ids = torch.zeros(len(lens), T, dtype=torch.long)
        for r, (c, q) in enumerate(lens):
            ids[r, T - q:] = seqs[r][0, c:]
        out = tiny_model(ids, cache, attention_mask=cache.attention_mask(), position_ids=cache.position_ids())
    for r, (c, q) in enumerate(lens):
        torch.testing.assert_close(out[r, T - q:], refs[r], atol=1e-5, rtol=0)
