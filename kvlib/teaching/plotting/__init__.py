"""Figures for the notebooks: each function draws from data it is given and returns the matplotlib Figure.

Figures are saved under figures/ with stable names by `save_figure`, only when asked (KVLIB_WRITE_FIGURES=1 or an
explicit directory); titles name the device where a figure shows measurements. Every axis carries its unit.
`concepts` draws computed quantities (bytes, FLOPs, what a step reads), `mechanism` the cache itself (K/V
growing along T, the offset mask), `paged` the block pool of notebook 07. The figures of measured timings are
kvlib.measure.bench's (`timing_figures`), re-exported here so that a notebook finds every figure in one place.
"""
from ...measure.bench.timing_figures import (TIMING_COLORS, plot_batch_throughput, plot_dtype_throughput,
                                             plot_generation_length, plot_headline, plot_per_token_latency,
                                             timing_figures)
from ...measure.figures import FIGURES_DIR, WRITE_FIGURES_ENV, device_label, save_figure
from .concepts import (plot_attention_share, plot_batch_slots, plot_cache_bytes_per_step, plot_cache_vs_weights,
                       plot_cumulative_flops, plot_generate_use_cache, plot_kv_bytes_vs_seq_len, plot_kv_calculator,
                       plot_kv_step_grids, plot_positions_per_step, plot_step_flops, plot_step_times)
from .mechanism import plot_kv_growth, plot_query_rows
