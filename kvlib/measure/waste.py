"""How much reserved KV memory holds real tokens: contiguous reservation vs paged blocks. Pure arithmetic on
request lengths, no model.

A request with P prompt and O output tokens holds P + t tokens after its t-th generated token (t = 1..O).
- Contiguous, max-length reservation (Orca "Max" in the vLLM paper): it reserves `max_len` slots from admission.
- Contiguous, exact reservation (Orca "Oracle"): it reserves P + O slots, as if the output length were known.
- Paged: it holds ceil((P + t) / block_size) blocks; only the last block has empty slots.
The used share is tokens held / slots reserved, summed over every request and every decode step (a time average).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..cache.paged.block_manager import blocks_needed

# Mean prompt and output lengths of the vLLM paper's workloads (Kwon et al. 2023, §6.1).
WORKLOADS = {"sharegpt": (161.31, 337.99), "alpaca": (19.31, 58.45)}
# Fig. 2 of the paper: share of KV memory holding token states.
PAPER_USED = {"Orca (Max)": 0.204, "Orca (Oracle)": 0.382, "vLLM": 0.963}


def sample_lengths(workload: str, n: int, *, max_len: int = 1024, seed: int = 0) -> list[tuple[int, int]]:
    """n (prompt, output) lengths with the workload's means: exponential (long-tailed, as both datasets are),
    at least 1 each, clipped so prompt + output <= max_len (GPT-2's 1,024 positions)."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {list(WORKLOADS)}, got {workload!r}")
    rng = random.Random(seed)
    p_mean, o_mean = WORKLOADS[workload]
    out = []
    for _ in range(n):
        p = min(max(1, round(rng.expovariate(1 / p_mean))), max_len - 1)
        o = min(max(1, round(rng.expovariate(1 / o_mean))), max_len - p)
        out.append((p, o))
    return out


@dataclass
class Usage:
    contiguous_max: float  # share of reserved slots holding tokens, max-length reservation
    contiguous_exact: float  # exact-length reservation
    paged: float  # paged blocks


def used_share(lengths: list[tuple[int, int]], *, max_len: int = 1024, block_size: int = 16) -> Usage:
    held = res_max = res_exact = res_paged = 0
    for p, o in lengths:
        for t in range(1, o + 1):
            held += p + t
            res_max += max_len
            res_exact += p + o
            res_paged += blocks_needed(p + t, block_size) * block_size
    return Usage(held / res_max, held / res_exact, held / res_paged)


def block_size_sweep(lengths: list[tuple[int, int]], block_sizes=(8, 16, 32, 64, 256)) -> list[dict]:
    """Per block size: the paged used share and the block-table entries per request at its end (the bookkeeping
    paging costs: smaller blocks waste less but need longer tables and more gathers)."""
    rows = []
    for bs in block_sizes:
        entries = sum(blocks_needed(p + o, bs) for p, o in lengths) / len(lengths)
        rows.append(dict(block_size=bs, used=used_share(lengths, block_size=bs).paged, table_entries=entries))
    return rows
