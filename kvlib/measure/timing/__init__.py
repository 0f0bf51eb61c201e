"""Timing GPT-2 decoding fairly: device-synchronized clocks, warm-up discarded, medians with their spread.

Shapes: B batch, T_prompt prompt tokens, T_total tokens a step attends over (cached + new), C channels,
nh heads, hs head size, L layers, V vocabulary, S slots of a fixed-shape cache.

How each curve is measured, and why:
- Cached decoding is timed step by step inside real greedy generations (`timed_generations`): each step's
  seconds at its own T_total, read on the device timeline (CUDA events on a GPU, with no host sync between
  steps; `perf_counter` on a CPU, where ops run synchronously). The total time of the first N tokens is the
  sum of the first N steps of the same run, so one long run gives both curves.
- Uncached decoding is *sampled*: the uncached step that attends over T_total tokens is one forward of the
  whole T_total-token sequence, so `time_uncached_forward` times that forward at a grid of lengths instead of
  generating 1024 tokens without a cache, which costs the sum of ~1000 such forwards (minutes on a CPU).
- The compiled method ("static-compiled") runs `kvlib.measure.compiled`'s fixed-shape decode step (gpt-fast's approach).

Sweeps return lists of `Measurement` (plain data, JSON-ready). A CUDA out-of-memory error inside a sweep is
recorded with status "oom" and the sweep goes on.
"""
from .clock import (METHODS, PEAK_BANDWIDTH_GBPS, Measurement, StepClock, bytes_per_decode_step, count_decode_ops,
                    dtype_name, measure, measure_copy_bandwidth, measure_launch_overhead_us, measure_matmul_gflops,
                    measure_read_bandwidth, oom_record, peak_bandwidth_gbps, random_prompt, summarize, synchronize,
                    weight_bytes)
from .sweeps import (batch_size_sweep, context_grid, dtype_sweep, estimate_uncached_totals, generation_sweep,
                     interleaved_generations, length_records, per_token_latency_sweep, step_records,
                     time_uncached_forward, timed_generations)
