"""The decode step-through: its pure counts and grids, and the widget's contract (CSS classes, slider -> text)."""
import matplotlib
import numpy as np
import pytest
import torch

import kvlib
from kvlib.teaching import plotting, widgets
from kvlib.teaching.trace import compare_prefix, count_positions, record_kv

matplotlib.use("Agg")


def by_class(box, css_class):
    found = [w for w in box.children if css_class in w._dom_classes]
    assert len(found) == 1, f"expected one child with class {css_class}"
    return found[0]


@pytest.mark.parametrize("n_prompt,n_new", [(1, 1), (4, 8), (6, 12)])
def test_counts_per_step(n_prompt, n_new):
    for step in range(n_new):
        c = widgets.step_counts(n_prompt, n_new, step)
        assert c["tokens"] == n_prompt + step
        assert c["uncached_computed"] == n_prompt + step  # everything, every step
        assert c["cached_computed"] == (n_prompt if step == 0 else 1)
        assert c["cached_read"] == (0 if step == 0 else n_prompt + step - 1)
        assert c["uncached_total"] == sum(n_prompt + s for s in range(step + 1))
        assert c["cached_total"] == n_prompt + step


def test_grid_cells():
    uncached, cached = widgets.kv_step_grid(3, 4, False), widgets.kv_step_grid(3, 4, True)
    assert uncached.shape == cached.shape == (4, 6)  # 4 steps over the 3 + 4 - 1 positions ever fed
    C, R, A = widgets.COMPUTED, widgets.READ, widgets.ABSENT
    assert uncached.tolist()[2] == [C, C, C, C, C, A]
    assert cached.tolist() == [[C, C, C, A, A, A], [R, R, R, C, A, A], [R, R, R, R, C, A], [R, R, R, R, R, C]]


def test_grid_counts_match_what_the_model_processes(tiny_model):
    # The drawing's "computed" cells are what kvlib's model really feeds through, step by step.
    ids = torch.arange(5)[None]
    for use_cache, cached in ((False, False), (True, True)):
        with count_positions(tiny_model) as per_forward:
            kvlib.generate(tiny_model, ids, 6, use_cache=use_cache)
        computed = (widgets.kv_step_grid(5, 6, cached) == widgets.COMPUTED).sum(axis=1)
        assert per_forward == computed.tolist()


def test_summary_text():
    assert widgets.step_summary(4, 8, 3).startswith(
        "step 3: uncached computes K/V for 7 tokens; cached computes 1 and reads 6 from the cache."
    )
    assert widgets.step_summary(4, 8, 0).startswith("step 0 (prefill): uncached computes K/V for 4 tokens; cached computes 4 and reads 0")


def test_slider_changes_summary_and_grid():
    box = widgets.step_through(n_prompt=4, n_new=8)
    assert "kvlib-stepthrough" in box._dom_classes
    slider = by_class(box, "kvlib-step-slider")
    summary = by_class(box, "kvlib-step-summary")
    grid = by_class(box, "kvlib-step-grid-view")
    assert slider.description == "step" and (slider.min, slider.max, slider.value) == (0, 7, 0)
    before, grid_before = summary.value, grid.value
    slider.value = 3
    assert summary.value != before
    assert "step 3: uncached computes K/V for 7 tokens; cached computes 1 and reads 6 from the cache" in summary.value
    assert grid.value != grid_before
    slider.value = 7
    assert "uncached computes K/V for 11 tokens; cached computes 1 and reads 10" in summary.value


def test_grid_html_fills_steps_up_to_the_current_one():
    computed = widgets.STEP_COLORS[widgets.COMPUTED]
    html0, html3 = widgets.step_grid_html(4, 8, 0), widgets.step_grid_html(4, 8, 3)
    # Uncached computes 4 cells at step 0 and 4+5+6+7 by step 3; cached 4, then 1 per step.
    assert html0.count(computed) == 4 + 4 + 1  # plus the legend swatch
    assert html3.count(computed) == (4 + 5 + 6 + 7) + (4 + 1 + 1 + 1) + 1


def test_static_figure(tmp_path):
    grids = {"uncached": widgets.kv_step_grid(4, 6, False), "cached": widgets.kv_step_grid(4, 6, True)}
    fig = plotting.plot_kv_step_grids(grids, title="t")
    path = plotting.save_figure(fig, "grid", tmp_path)
    assert path.stat().st_size > 1000
    assert len(fig.axes) == 2 and np.array_equal(fig.axes[1].images[0].get_array(), grids["cached"])


@pytest.mark.parametrize("args", [(0, 4, 0), (4, 0, 0), (4, 8, 8), (4, 8, -1), (4.0, 8, 0)])
def test_bad_arguments(args):
    with pytest.raises((ValueError, TypeError)):
        widgets.step_summary(*args)


# kvlib.teaching.trace, the measurements behind the step-through and notebook 01.

def test_record_kv_keeps_every_layer_and_position(tiny_model, tiny_config):
    ids = torch.arange(7)[None]
    kv = record_kv(tiny_model, ids)
    assert len(kv) == tiny_config.n_layer and kv.get_seq_length() == 7
    assert kv.key_cache[0].shape == (1, tiny_config.n_head, 7, tiny_config.head_dim)
    longer = record_kv(tiny_model, torch.arange(9)[None])
    same = compare_prefix(kv, longer)
    assert same.allclose and same.max_abs_diff < 1e-5  # appending tokens leaves earlier K/V alone
    other = compare_prefix(kv, record_kv(tiny_model, torch.arange(1, 10)[None]))  # a different sequence
    assert not other.allclose and not other.identical and other.max_abs_diff > 1e-3
    with pytest.raises(ValueError):
        compare_prefix(longer, kv)


def test_count_positions_removes_its_hook(tiny_model):
    with count_positions(tiny_model) as per_forward:
        tiny_model(torch.arange(4)[None])
        tiny_model(input_ids=torch.arange(2)[None])
    tiny_model(torch.arange(3)[None])  # outside the block: not recorded
    assert per_forward == [4, 2]
    with pytest.raises(TypeError):
        with count_positions("gpt2"):
            pass
