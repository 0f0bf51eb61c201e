"""The figures of the mechanism and of the ideas draw what they are given: panels, titles, no hidden series."""
import matplotlib
import pytest

import kvlib
from kvlib.teaching import plotting

matplotlib.use("Agg")


def test_kv_growth_has_one_panel_per_step_with_the_tensor_shape():
    import matplotlib.pyplot as plt

    fig = plotting.plot_kv_growth(4, 3, 6, head_dim=64, title="t")
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles == ["after the prefill: K of shape (1, 6, 4, 64)"] + [
        f"after decode step {s}: K of shape (1, 6, {4 + s}, 64)" for s in (1, 2, 3)]
    plt.close(fig)


def test_query_rows_draw_the_offset_mask():
    import matplotlib.pyplot as plt

    fig = plotting.plot_query_rows({"decode": kvlib.causal_mask(1, 7), "chunk": kvlib.causal_mask(3, 7)}, title="t")
    images = [ax.get_images()[0].get_array() for ax in fig.axes]
    assert images[0].tolist() == [[1, 1, 1, 1, 1, 1, 2]]  # 6 cached keys, then its own
    assert images[1].tolist() == [[1, 1, 1, 1, 2, 0, 0], [1, 1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 2, 2, 2]]
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == ["Q4", "Q5", "Q6"]
    plt.close(fig)


@pytest.mark.parametrize("limits", [None, {"a": 1024}])
def test_memory_plot_marks_context_limits(limits):
    import matplotlib.pyplot as plt

    xs = [128, 512, 2048, 8192]
    fig = plotting.plot_kv_bytes_vs_seq_len(xs, {"a": [x * 2**20 for x in xs]}, title="t", context_limits=limits)
    labels = [line.get_label() for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert labels == (["a"] if limits is None else ["a (context 1,024)"])
    if limits:  # solid up to the limit, dotted from it: no gap between the two at the diamond
        solid, dotted = fig.axes[0].get_lines()[:2]
        assert list(solid.get_xdata()) == [128, 512, 1024] and list(dotted.get_xdata()) == [1024, 2048, 8192]
    plt.close(fig)


def test_attention_share_draws_one_panel_per_definition():
    import matplotlib.pyplot as plt

    panels = {"p1": {"x": [0.1, 0.5, 0.6]}, "p2": {"y": [0.1, 0.2, 0.3], "z": [0.05, 0.1, 0.2]}}
    fig = plotting.plot_attention_share([1, 2, 3], panels, n_positions=2, crossovers={"x": 2}, title="t")
    assert [ax.get_title() for ax in fig.axes] == ["p1", "p2"]
    plt.close(fig)


def test_cumulative_flops_draws_the_fits_visibly_beyond_the_fit_range():
    import matplotlib.pyplot as plt
    import numpy as np

    n = np.array([1, 10, 100, 1000])
    fig = plotting.plot_cumulative_flops(n, {"a": [1e3, 1e5, 1e7, 1e9]}, fits={"a": (2.0, np.log(1e3))},
                                         fit_range=(100, 1000), title="t")
    fit = next(line for line in fig.axes[0].get_lines() if "fit" in line.get_label())
    assert min(fit.get_xdata()) == 1 and fit.get_color() == "black"  # extended to n = 1, not hidden under "a"
    plt.close(fig)


def test_step_times_draw_the_reference_beside_the_live_lines():
    import matplotlib.pyplot as plt

    fig = plotting.plot_step_times([1, 2, 3], {"live": [0.01, 0.02, 0.03]}, title="t",
                                   reference={"committed": ([1, 3], [0.02, 0.04])})
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert list(lines["committed"].get_ydata()) == [20.0, 40.0] and lines["committed"].get_linestyle() == "--"
    plt.close(fig)


def test_rolling_median_keeps_the_length_and_ignores_a_spike():
    from kvlib.measure.bench.timing_figures import rolling_median

    smooth = rolling_median([1, 1, 1, 9, 1, 1, 1], window=3)
    assert len(smooth) == 7 and max(smooth) == 1
