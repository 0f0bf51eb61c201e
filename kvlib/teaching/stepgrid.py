"""Which K/V rows each decode step computes and which it reads, cached and uncached: pure counts and grids.

The step-through widget (kvlib.teaching.widgets) and its figure (kvlib.teaching.plotting.concepts) both draw these. Step 0 is the
forward over the n_prompt prompt tokens (the prefill); step s >= 1 is the forward that has n_prompt + s tokens in
hand and produces the next one. Shapes: S steps (= n_new), T token positions.
"""
from __future__ import annotations

import numpy as np


ABSENT, READ, COMPUTED = 0, 1, 2  # cell codes of kv_step_grid
STEP_COLORS = {ABSENT: "#f4f4f4", READ: "#4c72b0", COMPUTED: "#dd8452"}  # blue: read from cache, orange: computed
STEP_LABELS = {READ: "K/V read from the cache", COMPUTED: "K/V computed this step"}


def check_sizes(n_prompt: int, n_new: int) -> None:
    for name, value in (("n_prompt", n_prompt), ("n_new", n_new)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def check_step(n_new: int, step: int) -> None:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < n_new:
        raise ValueError(f"step must be an int in 0..{n_new - 1} (one step per generated token), got {step!r}")


def kv_step_grid(n_prompt: int, n_new: int, cached: bool) -> np.ndarray:
    """(S, T) int grid, S = n_new steps, T = n_prompt + n_new - 1 positions ever fed: ABSENT, READ or COMPUTED.

    Uncached, step s recomputes K/V for all n_prompt + s tokens. Cached, the prefill computes the prompt's K/V;
    each later step computes only the newest token's and reads the rest from the cache.
    """
    check_sizes(n_prompt, n_new)
    steps = np.arange(n_new)[:, None]  # (S, 1)
    positions = np.arange(n_prompt + n_new - 1)[None, :]  # (1, T)
    present = positions < n_prompt + steps  # (S, T): tokens in hand at each step
    if not cached:
        return np.where(present, COMPUTED, ABSENT)  # (S, T)
    newest = (positions == n_prompt + steps - 1) | ((steps == 0) & present)  # (S, T): the prefill computes all
    return np.where(newest, COMPUTED, np.where(present, READ, ABSENT))  # (S, T)


def step_counts(n_prompt: int, n_new: int, step: int) -> dict[str, int]:
    """K/V rows (per layer) computed and read at `step`, for the uncached and the cached loop, and totals so far."""
    check_sizes(n_prompt, n_new)
    check_step(n_new, step)
    uncached, cached = kv_step_grid(n_prompt, n_new, False), kv_step_grid(n_prompt, n_new, True)
    return {
        "tokens": n_prompt + step,
        "uncached_computed": int((uncached[step] == COMPUTED).sum()),
        "cached_computed": int((cached[step] == COMPUTED).sum()),
        "cached_read": int((cached[step] == READ).sum()),
        "uncached_total": int((uncached[: step + 1] == COMPUTED).sum()),
        "cached_total": int((cached[: step + 1] == COMPUTED).sum()),
    }


def step_summary(n_prompt: int, n_new: int, step: int) -> str:
    """One line saying what each loop does at `step`, and the K/V rows computed so far."""
    c = step_counts(n_prompt, n_new, step)
    where = " (prefill)" if step == 0 else ""
    return (
        f"step {step}{where}: uncached computes K/V for {c['uncached_computed']} tokens; cached computes "
        f"{c['cached_computed']} and reads {c['cached_read']} from the cache. Computed so far, per layer: "
        f"uncached {c['uncached_total']}, cached {c['cached_total']}."
    )
