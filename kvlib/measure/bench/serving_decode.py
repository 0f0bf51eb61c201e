"""`--part decode`: the time of one decode step as the context grows, kvlib's compiled engine beside vLLM's default
(the same weights, the same requests): where the two engines' step times part.

Case: `rows` requests with random prompts of `prompt` tokens each generate `new_tokens` tokens (greedy), all at
once; for every row count and prompt length, the median wall time of the steps in which every request decodes (the
prefill steps and the first decode step left out). A decode step's weight products cost the same at every context
(one token per row); what grows with the context is attention, which reads every cached key and value of every
row. So the growth of an engine's step from the shortest prompt to the longest is its attention's cost at those
extra keys, and the step at the shortest prompt is everything else. The engines alternate, the order flipped every
repeat, after one untimed run each of the smallest and the largest case, cut to 16 new tokens (compiling,
allocating: serving_runs' warm-up); every engine's tokens are compared with kvlib's.
"""
from __future__ import annotations

import random
import statistics

from ...model.gpt2 import GPT2
from .serving_runs import _serve_one, _warm_up, local_engines
from .serving_stats import compare_tokens, spread

CASE = dict(rows=(2, 8), prompts=(16, 240, 720), new_tokens=48)


def check_case(case: dict, n_positions: int) -> None:
    if set(case) != set(CASE):
        raise ValueError(f"the decode case needs exactly the keys {sorted(CASE)}, got {sorted(case)}")
    if min(case["rows"]) < 1 or min(case["prompts"]) < 1 or case["new_tokens"] < 3:
        raise ValueError(f"rows and prompts must be >= 1 and new_tokens >= 3, got {case}")
    if max(case["prompts"]) + case["new_tokens"] > n_positions:
        raise ValueError(f"prompts of {max(case['prompts'])} + {case['new_tokens']} new tokens must fit the model's "
                         f"{n_positions} positions")


def budget_tokens(case: dict, block_size: int) -> int:
    """Token slots that hold every request of the largest case at once (no preemption), in whole blocks."""
    per_request = -(-(max(case["prompts"]) + case["new_tokens"]) // block_size)
    return max(case["rows"]) * per_request * block_size


def decode_requests(rows: int, prompt: int, new_tokens: int, vocab_size: int, seed: int = 0) -> list:
    rng = random.Random(seed * 7919 + rows * 1031 + prompt)
    return [([rng.randrange(vocab_size) for _ in range(prompt)], new_tokens) for _ in range(rows)]


def decode_step_ms(served: dict, rows: int) -> float:
    """Median wall time (ms) of the steps in which all `rows` requests got a token, after the first such step."""
    ends, got = served["step_end"], served["step_rows"]
    decode = [i for i, n in enumerate(got) if n == rows]
    times = [ends[i] - ends[i - 1] for i in decode[1:]]
    if not times:
        raise RuntimeError(f"no step in which all {rows} requests decoded")
    return statistics.median(times) * 1e3


def run_decode(model: GPT2, case: dict, s, peers: dict, log=print) -> dict:
    check_case(case, model.config.n_positions)
    budget = budget_tokens(case, s.block_size)
    factories, names = local_engines(model, budget, s), ["kvlib_compiled", *peers]
    cases = [(r, p) for r in case["rows"] for p in case["prompts"]]
    make = lambda r, p: decode_requests(r, p, case["new_tokens"], model.config.vocab_size, s.seed)  # noqa: E731
    for r, p in (cases[0], cases[-1]):  # untimed: compile, allocate
        _warm_up(names, factories, peers, make(r, p))
    points = []
    for r, p in cases:
        requests, ms, tokens = make(r, p), {name: [] for name in names}, {}
        for rep in range(s.repeats):
            for name in (names if rep % 2 == 0 else names[::-1]):
                served, _ = _serve_one(name, factories, peers, requests)
                ms[name].append(decode_step_ms(served, r))
                tokens.setdefault(name, served["tokens"])
        same = {name: compare_tokens(model, requests, tokens["kvlib_compiled"], t)["identical"]
                for name, t in tokens.items() if name != "kvlib_compiled"}
        points.append(dict(rows=r, prompt=p, mean_context=p + case["new_tokens"] / 2,
                           ms={name: spread(v) for name, v in ms.items()}, same_tokens=same))
        log(f"  {r} rows, {p}-token prompts: " + ", ".join(f"{n} {spread(v)['median']:.1f} ms/step"
                                                          for n, v in ms.items()))
    return dict(case=dict(case), budget_tokens=budget, block_size=s.block_size, repeats=s.repeats, points=points,
                summary=decode_summary(points))


def decode_summary(points: list[dict]) -> dict:
    """Per row count and engine: the step at the shortest prompt and its growth at the longest (median ms), and
    kvlib over vLLM at each prompt (a time ratio: above 1, kvlib's step is slower)."""
    out = {}
    for r in sorted({p["rows"] for p in points}):
        ps = sorted((p for p in points if p["rows"] == r), key=lambda p: p["prompt"])
        names = list(ps[0]["ms"])
        med = {n: [p["ms"][n]["median"] for p in ps] for n in names}
        row = dict(prompts=[p["prompt"] for p in ps],
                   shortest_ms={n: med[n][0] for n in names}, growth_ms={n: med[n][-1] - med[n][0] for n in names})
        if "vllm_default" in names:
            row["kvlib_over_vllm"] = [a / b for a, b in zip(med["kvlib_compiled"], med["vllm_default"])]
        out[str(r)] = row
    return out
