"""Every cache kind rolls back (crop) to exactly the state a fresh cache reaches on the kept tokens, each the way the
engines do it; the ones that cannot say so; rolling back past the start is a clear error."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kvlib
from kvlib.cache.paged import BlockManager, PagedKVCache, Sequence, blocks_needed

from speculative_support import KINDS, RESIDUAL, SINKS, WINDOW, held_keys, new_cache, varied_gpt2

CONFIG = kvlib.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=96, vocab_size=97)
MODEL = varied_gpt2(CONFIG, seed=1)
IDS = torch.randint(0, 97, (2, 80), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def forward_then_crop(kind: str, prefix: int, new: int, keep: int):
    """A cache of `prefix` tokens, a forward of `new` more (recorded where the kind needs it), cropped to `keep`."""
    cache = new_cache(kind, MODEL, 2, 96)
    MODEL(IDS[:, :prefix], cache)
    if hasattr(cache, "record_overwrites"):
        cache.record_overwrites(new)
    MODEL(IDS[:, prefix:prefix + new], cache)
    cache.crop(keep)
    return cache


@settings(max_examples=40, deadline=None, derandomize=True)
@given(kind=st.sampled_from(KINDS), prefix=st.integers(1, 60), new=st.integers(1, RESIDUAL), data=st.data())
def test_crop_continues_like_a_fresh_cache(kind, prefix, new, data):
    keep = data.draw(st.integers(prefix, prefix + new))
    cache = forward_then_crop(kind, prefix, new, keep)
    assert cache.get_seq_length() == keep
    fresh = new_cache(kind, MODEL, 2, 96)
    with torch.no_grad():
        MODEL(IDS[:, :keep], fresh)
        got, want = MODEL(IDS[:, keep:keep + 3], cache), MODEL(IDS[:, keep:keep + 3], fresh)
    # float64: 1e-9 is rounding. The quantized cache is not a one-shot prefill's: a forward may have flushed
    # accepted tokens into codes early, so it matches to the rounding of its int8 codes.
    assert (got - want).abs().max().item() < (1e-2 if kind == "quantized" else 1e-9)
    if kind != "quantized":
        assert torch.allclose(held_keys(cache)[0], held_keys(fresh)[0], atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_crop_with_a_negative_length_removes_that_many(kind):
    a, b = forward_then_crop(kind, 20, 5, -3), forward_then_crop(kind, 20, 5, 22)
    assert a.get_seq_length() == b.get_seq_length() == 22
    assert torch.equal(held_keys(a)[0], held_keys(b)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_crop_past_the_start_or_the_end_is_refused(kind):
    cache = new_cache(kind, MODEL, 2, 96)
    with torch.no_grad():
        MODEL(IDS[:, :5], cache)
    with pytest.raises(ValueError, match="rollback past the start"):
        cache.crop(-6)
    with pytest.raises(ValueError, match="holds 5"):
        cache.crop(6)
    with pytest.raises(TypeError, match="int"):
        cache.crop(2.0)
    cache.crop(0)
    assert cache.get_seq_length() == 0


def test_static_cache_rewinds_in_place():
    """gpt-fast's rollback: the write position moves back; the buffers stay (same tensors, same addresses)."""
    cache = kvlib.StaticKVCache(CONFIG, 2, 96, dtype=torch.float64)
    with torch.no_grad():
        MODEL(IDS[:, :30], cache)
    buffers = [t.data_ptr() for t in cache.key_cache + cache.value_cache]
    cache.crop(26)
    assert [t.data_ptr() for t in cache.key_cache + cache.value_cache] == buffers
    assert cache.nbytes_allocated == 2 * 2 * 2 * 96 * 32 * 8 and cache.nbytes == 2 * 2 * 2 * 26 * 32 * 8


def test_paged_cache_frees_the_blocks_of_rejected_slots_only():
    cache = PagedKVCache(CONFIG, 20, 4, dtype=torch.float64)
    with torch.no_grad():
        MODEL(IDS[:, :13], cache)  # 13 tokens: 4 blocks per row, 8 of 20 taken
    assert len(cache._free) == 12
    cache.crop(9)  # 9 tokens: 3 blocks; the third holds token 8 and three rejected slots, and stays
    assert [len(t) for t in cache.block_tables] == [3, 3] and len(cache._free) == 14
    held = sorted(b for t in cache.block_tables for b in t)
    assert len(set(held)) == 6 and not set(held) & set(cache._free)  # no block both held and free
    cache.crop(8)  # a block boundary: the third block now holds only rejected slots
    assert [len(t) for t in cache.block_tables] == [2, 2] and len(cache._free) == 16


def test_paged_cache_driven_by_the_engine_is_rolled_back_by_its_block_manager():
    cache = PagedKVCache(CONFIG, 8, 4)
    cache.prepare([[0, 1]], [4], [2])
    with pytest.raises(ValueError, match="BlockManager.crop"):
        cache.crop(4)


def test_block_manager_never_caches_a_partly_rejected_block():
    """A speculative forward computed 9 tokens, 6 accepted: the block of tokens 4..7 is partly rejected. It stays in
    the table (token 4 and 5 are kept) but out of the prefix cache, even if the caller registered it too early."""
    bm = BlockManager(num_blocks=8, block_size=4)
    seq = Sequence(0, list(range(100, 109)), max_new_tokens=8)  # the prompt and three drafts, say
    bm.allocate(seq)
    assert bm.append_slots(seq, 9)
    seq.num_computed_tokens = 9
    bm.cache_computed_blocks(seq)  # too early: blocks 0..3 and 4..7 registered, the second with rejected tokens
    assert len(bm.hash_to_block) == 2
    bm.crop(seq, 6)
    assert seq.num_computed_tokens == 6 and len(seq.block_table) == 2 and bm.num_used_blocks == 2
    assert len(bm.hash_to_block) == 1 and bm.block_hash[seq.block_table[1]] is None
    bm.check_invariants([seq])
    seq.token_ids = seq.token_ids[:6] + [999]  # the accepted tokens, and the target's own token
    other = Sequence(1, list(range(100, 108)) + [0], max_new_tokens=4)  # the rejected drafts as a prompt
    assert len(bm.match_prefix(other.token_ids)) == 1  # only the fully accepted block
    with pytest.raises(ValueError, match="cannot keep 7"):
        bm.crop(seq, 7)


def test_sliding_window_cannot_roll_back_a_wrapped_ring_without_a_record():
    cache = kvlib.SlidingWindowKVCache(CONFIG, window=WINDOW, sink_tokens=SINKS)
    with torch.no_grad():
        MODEL(IDS[:, :5], cache)
        MODEL(IDS[:, 5:9], cache)
    cache.crop(6)  # not wrapped yet (2 sinks + 7 of 12 ring slots): nothing was overwritten, no record needed
    with torch.no_grad():
        MODEL(IDS[:, 6:30], cache)
        MODEL(IDS[:, 30:34], cache)  # wrapped: tokens 30..33 overwrote tokens 18..21
    with pytest.raises(ValueError, match="ring has wrapped"):
        cache.crop(31)  # the window of 31 tokens needs tokens 19..30
    cache.crop(34)  # dropping nothing is fine
    cache.record_overwrites(4)
    with torch.no_grad():
        MODEL(IDS[:, 34:38], cache)
    cache.crop(35)
    fresh = kvlib.SlidingWindowKVCache(CONFIG, window=WINDOW, sink_tokens=SINKS)
    with torch.no_grad():
        MODEL(IDS[:, :35], fresh)
    assert torch.equal(held_keys(cache)[1], held_keys(fresh)[1])
    assert torch.allclose(held_keys(cache)[0], held_keys(fresh)[0], atol=1e-9)
    with pytest.raises(ValueError, match="must fit the window"):
        cache.record_overwrites(WINDOW + 1)


def test_a_stale_record_does_not_help():
    """A record describes the slots before one forward; after another forward it is stale and crop ignores it."""
    cache = kvlib.SlidingWindowKVCache(CONFIG, window=WINDOW, sink_tokens=SINKS)
    with torch.no_grad():
        MODEL(IDS[:, :30], cache)
        cache.record_overwrites(2)
        MODEL(IDS[:, 30:32], cache)
        MODEL(IDS[:, 32:34], cache)  # not recorded
    with pytest.raises(ValueError, match="ring has wrapped"):
        cache.crop(31)


def test_quantized_cache_rolls_back_only_within_its_full_precision_window():
    cache = kvlib.QuantizedKVCache(CONFIG, 8, group_size=4, residual_length=RESIDUAL)
    with torch.no_grad():
        MODEL(IDS[:, :20], cache)  # 20 tokens: the oldest 12 as codes, 8 in full precision
    assert cache.quantized_length() == 12
    cache.crop(14)
    assert cache.get_seq_length() == 14 and cache.quantized_length() == 12
    with pytest.raises(ValueError, match="already int codes"):
        cache.crop(11)
    with torch.no_grad():
        MODEL(IDS[:, 14:20], cache)  # 20 again: the same tokens, so the same codes and window as before
        again = kvlib.QuantizedKVCache(CONFIG, 8, group_size=4, residual_length=RESIDUAL)
        MODEL(IDS[:, :20], again)
    # layer 0's keys depend on the token and its position only (deeper ones on what the forward attended to)
    assert torch.allclose(cache.dequantized(0)[0], again.dequantized(0)[0], atol=1e-9)


def test_blocks_needed_matches_the_paged_crop():
    assert [blocks_needed(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
