"""kvlib.teaching.block_view: the drawn block tables and pool equal the engine's real state at every step, and the
step-through widget's contract (CSS classes, slider "step" -> summary and view)."""
from html.parser import HTMLParser

import pytest
import torch

import kvlib
from kvlib.cache.paged import BlockManager, Sequence
from kvlib.serving import LLMEngine
from kvlib.teaching import block_view

MODEL = kvlib.random_gpt2(kvlib.GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=128, vocab_size=97), seed=1)
SYSTEM = torch.randint(0, 97, (10,), generator=torch.Generator().manual_seed(3)).tolist()


class Cells(HTMLParser):
    """The data-* attributes of every block-table cell and pool cell in block_table_html's output."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.blocks, self.pool = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("class") == "kvlib-block":
            self.blocks.append({k[5:]: int(v) for k, v in a.items() if k.startswith("data-")})
        elif a.get("class") == "kvlib-pool-block":
            self.pool.append({"block": int(a["data-block"]), "state": a["data-state"], "refs": int(a["data-refs"])})

    def table(self, rid):
        return [c for c in self.blocks if c["request"] == rid]


def run_with_checks(block_size=4, num_blocks=24, check=None):
    """Requests sharing a 10-token prefix, the first alone so its blocks are cached; `check(engine, snap)` after
    every step, against the live engine. Returns the history of snapshots."""
    engine = LLMEngine(MODEL, num_blocks=num_blocks, block_size=block_size, max_num_batched_tokens=16)
    arrive = {0: [SYSTEM + [1, 2]], 2: [SYSTEM + [3], SYSTEM + [4, 5, 6]], 4: [[7, 8, 9]]}
    history, step = [], 0
    while step == 0 or engine.has_unfinished_requests():
        for prompt in arrive.get(step, []):
            engine.add_request(prompt, max_new_tokens=6)
        engine.step()
        snap = block_view.engine_snapshot(engine, step)
        if check:
            check(engine, snap)
        history.append(snap)
        step += 1
    return history


@pytest.mark.parametrize("block_size,num_blocks", [(4, 24), (2, 40), (4, 6)])  # (4, 6): preemption too
def test_drawn_tables_and_pool_equal_the_engine(block_size, num_blocks):
    seen = {"shared": 0, "partial": 0, "cached": 0}

    def check(engine, snap):
        bm, running = engine.block_manager, engine.scheduler.running
        cells = Cells(block_view.block_table_html(snap))
        assert sorted({c["request"] for c in cells.blocks}) == sorted(s.seq_id for s in running if s.block_table)
        for seq in running:
            drawn = cells.table(seq.seq_id)
            assert [c["physical"] for c in drawn] == seq.block_table  # the physical ids, in logical order
            assert [c["logical"] for c in drawn] == list(range(len(seq.block_table)))
            assert sum(c["filled"] for c in drawn) == seq.num_computed_tokens
            assert all(c["filled"] == block_size for c in drawn[:-1]) and 1 <= drawn[-1]["filled"] <= block_size
            seen["partial"] += drawn[-1]["filled"] < block_size
            for c in drawn:
                assert c["refs"] == bm.ref_counts[c["physical"]] >= 1
                assert c["shared"] == (bm.ref_counts[c["physical"]] > 1)
                assert c["cached"] == (bm.block_hash[c["physical"]] is not None)
                seen["shared"] += c["shared"]
        shared_ids = {b for b in range(bm.num_blocks) if bm.ref_counts[b] > 1}
        holders = {b: sum(b in s.block_table for s in running) for b in shared_ids}
        assert all(n == bm.ref_counts[b] for b, n in holders.items())  # a shared block shows in each holder's row
        states = {p["block"]: p["state"] for p in cells.pool}
        assert sorted(states) == list(range(num_blocks))
        counts = {s: list(states.values()).count(s) for s in ("in_use", "free", "cached")}
        assert counts["in_use"] == bm.num_used_blocks and counts["cached"] == bm.num_cached_free_blocks
        assert counts["free"] + counts["cached"] == bm.num_free_blocks
        assert sum(counts.values()) == num_blocks
        assert all(p["refs"] == bm.ref_counts[p["block"]] for p in cells.pool)
        seen["cached"] += counts["cached"]
        c = block_view.pool_counts(snap)
        assert (c["in_use"], c["free"], c["cached"]) == (bm.num_used_blocks, bm.num_free_blocks,
                                                         bm.num_cached_free_blocks)
        assert c["in_use"] + c["free"] == num_blocks
        summary = block_view.snapshot_summary(snap)
        assert f"step {snap['step']}:" in summary and f"{c['in_use']} in use ({len(shared_ids)} shared)" in summary
        assert f"{c['free']} free ({c['cached']} of them still cached)" in summary

    run_with_checks(block_size, num_blocks, check)
    assert seen["shared"] and seen["partial"] and seen["cached"]  # the workload exercised every marking


def test_snapshots_are_copies():
    history = run_with_checks()
    tables = [snap["tables"] for snap in history]
    assert tables[0] == {0: [0, 1, 2]}  # 12 tokens, blocks of 4: 3 blocks, and the engine has moved on since
    assert tables[-1] == {} and block_view.pool_counts(history[-1])["in_use"] == 0
    assert len({block_view.block_table_html(s) for s in history}) > len(history) // 2


def test_partly_filled_last_block_by_hand():
    bm = BlockManager(num_blocks=6, block_size=4, enable_prefix_caching=False)
    a, b = Sequence(0, list(range(7)), 4), Sequence(1, [5], 4)
    for s in (a, b):
        bm.allocate(s)
        bm.append_slots(s, s.num_tokens)
        s.num_computed_tokens = s.num_tokens
    snap = block_view.pool_snapshot(bm, [a, b], step=3)
    assert block_view.block_fill(snap, 0) == [4, 3] and block_view.block_fill(snap, 1) == [1]
    cells = Cells(block_view.block_table_html(snap))
    assert [(c["physical"], c["filled"]) for c in cells.table(0)] == [(0, 4), (1, 3)]
    assert [p["state"] for p in cells.pool] == ["in_use"] * 3 + ["free"] * 3
    assert "step 3: 2 running requests" in block_view.snapshot_summary(snap)


def test_stepper_slider_changes_summary_and_view():
    pytest.importorskip("ipywidgets")
    history = run_with_checks()
    box = block_view.block_table_stepper(history)
    assert "kvlib-block-stepper" in box._dom_classes
    (slider,), (summary,), (view,) = ([w for w in box.children if cls in w._dom_classes] for cls in
                                      ("kvlib-block-step-slider", "kvlib-block-summary", "kvlib-block-table-view"))
    assert slider.description == "step" and (slider.min, slider.max, slider.value) == (0, len(history) - 1, 0)
    assert view.value == block_view.block_table_html(history[0])
    before = summary.value, view.value
    slider.value = 3
    assert (summary.value, view.value) != before and summary.value.startswith("step 3:")
    assert view.value == block_view.block_table_html(history[3])
    slider.value = len(history) - 1
    assert "0 in use" in summary.value and "kvlib-block-row" not in view.value


def test_bad_input():
    history = run_with_checks()
    with pytest.raises(ValueError, match="steps in a row"):
        block_view.block_table_stepper([history[1], history[4]])
    with pytest.raises(ValueError, match="steps in a row"):
        block_view.block_table_stepper([])
    with pytest.raises(ValueError, match="pool_snapshot"):
        block_view.block_table_html({"step": 0, "tables": {}, "cached": set()})  # the figure's smaller dicts
