"""`--part chunked`: a long prompt arrives while other requests decode; what chunked prefill does to their latency.

Case: `decoders` requests (random prompts of `prompt` tokens, `output` new tokens each, greedy) run in kvlib's
LLMEngine; once every one of them has `arrive_after` tokens, a request with a `long_prompt`-token prompt arrives.
Two token budgets per step (`max_num_batched_tokens`): a small one (**chunked**: the long prompt is split over
several steps, each also carrying the decode rows, which the scheduler serves first) and one that holds the whole
prompt and the decode rows (**whole**: the prompt in one step, during which every decoding request waits).

Measured per run: every step's wall time, rows and tokens; the decoding requests' inter-token gaps that overlap the
window from the arrival to the long request's first token (their p50 and the longest), each decoding request's time
per output token over its whole decode (TPOT, p50 and max across requests), and the long request's time to first
token (TTFT, from its arrival). The two settings alternate, `repeats` runs each, after one untimed run of each
(compiling, allocating). Both settings produce the same tokens (checked: chunking changes when, not what).
"""
from __future__ import annotations

import random
import statistics
import time

from ...model.gpt2 import GPT2
from ...serving.engine import LLMEngine

METRICS = {"gap_p50_ms": "decode gaps around the arrival, p50", "gap_max_ms": "longest decode gap",
           "tpot_p50_ms": "TPOT of the decoding requests, p50", "tpot_max_ms": "TPOT of the decoding requests, max",
           "ttft_ms": "the long request's TTFT"}
CASE = dict(decoders=16, prompt=32, output=64, long_prompt=900, long_output=16, arrive_after=8, budgets=(128, 1024))


def check_case(case: dict, n_positions: int) -> None:
    if set(case) != set(CASE):
        raise ValueError(f"the chunked case needs exactly the keys {sorted(CASE)}, got {sorted(case)}")
    if case["long_prompt"] + case["long_output"] > n_positions or case["prompt"] + case["output"] > n_positions:
        raise ValueError(f"requests of {case['long_prompt']} + {case['long_output']} and {case['prompt']} + "
                         f"{case['output']} tokens must fit the model's {n_positions} positions")
    small, whole = case["budgets"]
    if not small < case["long_prompt"] + case["decoders"] <= whole or case["arrive_after"] >= case["output"]:
        raise ValueError(f"budgets must be (chunked < long prompt + decode rows <= whole), got {case['budgets']} for "
                         f"{case['long_prompt']} + {case['decoders']} tokens; arrive_after must be < output")


def requests(case: dict, vocab_size: int, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(seed)
    decoders = [[rng.randrange(vocab_size) for _ in range(case["prompt"])] for _ in range(case["decoders"])]
    return decoders, [rng.randrange(vocab_size) for _ in range(case["long_prompt"])]


def chunked_run(model: GPT2, case: dict, budget: int, block_size: int, seed: int = 0) -> dict:
    """One run: the decoders, the long prompt arriving, every step timed. Times in s from the first step."""
    decoders, long_prompt = requests(case, model.config.vocab_size, seed)
    per_request = -(-(case["prompt"] + case["output"]) // block_size)
    num_blocks = case["decoders"] * (per_request + 2) + -(-(case["long_prompt"] + case["long_output"]) // block_size)
    engine = LLMEngine(model, num_blocks, block_size, max_num_batched_tokens=budget, check_invariants=False)
    ids = [engine.add_request(p, case["output"]) for p in decoders]
    times, tokens = {i: [] for i in ids}, {}
    steps, long_id, arrival = [], None, None
    start = time.perf_counter()
    while engine.has_unfinished_requests():
        if long_id is None and min(len(t) for t in times.values()) >= case["arrive_after"]:
            long_id = engine.add_request(long_prompt, case["long_output"])
            times[long_id], arrival = [], time.perf_counter() - start
        t0 = time.perf_counter()
        outs = engine.step()
        t1 = time.perf_counter()
        stats = engine.stats
        steps.append(dict(start_s=t0 - start, ms=1e3 * (t1 - t0), rows=stats.batch_sizes[-1],
                          tokens=stats.batched_tokens[-1]))
        for o in outs:
            times[o.request_id].append(t1 - start)
            tokens[o.request_id] = o.token_ids
    first = times[long_id][0]
    gaps = [b - a for i in ids for a, b in zip(times[i], times[i][1:]) if b > arrival and a < first]
    tpot = [(times[i][-1] - times[i][0]) / (len(times[i]) - 1) for i in ids]
    return dict(budget=budget, arrival_s=arrival, long_first_token_s=first, steps=steps,
                gap_p50_ms=1e3 * statistics.median(gaps), gap_max_ms=1e3 * max(gaps),
                tpot_p50_ms=1e3 * statistics.median(tpot), tpot_max_ms=1e3 * max(tpot), ttft_ms=1e3 * (first - arrival),
                window_steps=sum(arrival <= s["start_s"] < first for s in steps),
                tokens=[tokens[i] for i in (*ids, long_id)])


def run_chunked(model: GPT2, case: dict, block_size: int, repeats: int, log=print) -> dict:
    check_case(case, model.config.n_positions)
    names = ("chunked", "whole")
    budgets = dict(zip(names, case["budgets"]))
    for name in names:  # untimed: compile the decode kernel, allocate
        chunked_run(model, case, budgets[name], block_size)
    runs = {name: [] for name in names}
    for r in range(repeats):
        for name in names:
            runs[name].append(chunked_run(model, case, budgets[name], block_size))
            x = runs[name][-1]
            log(f"  repeat {r + 1}/{repeats} {name} (budget {budgets[name]}): longest gap {x['gap_max_ms']:.0f} ms, "
                f"TTFT {x['ttft_ms']:.0f} ms, {x['window_steps']} steps in the window")
    same = all(x["tokens"] == runs["chunked"][0]["tokens"] for rs in runs.values() for x in rs)
    if not same:
        raise RuntimeError("chunked and whole prefill gave different tokens")
    for rs in runs.values():
        for x in rs:
            del x["tokens"]
    summary = {name: {k: dict(median=statistics.median(x[k] for x in rs), min=min(x[k] for x in rs),
                              max=max(x[k] for x in rs)) for k in METRICS} for name, rs in runs.items()}
    return dict(case=dict(case, budgets=list(case["budgets"])), block_size=block_size, repeats=repeats,
                same_tokens=same, summary=summary, runs=runs)


def chunked_lines(data: dict) -> list[str]:
    c = data["chunked"]
    k = c["case"]
    lines = [f"{k['decoders']} requests decoding ({k['prompt']}-token prompts, {k['output']} new tokens); once each "
             f"has {k['arrive_after']} tokens, a {k['long_prompt']}-token prompt arrives; median (min-max) of "
             f"{c['repeats']} alternating runs, the same tokens both ways: {c['same_tokens']}"]
    for name, budget in zip(("chunked", "whole"), k["budgets"]):
        s = c["summary"][name]
        ms = {m: f"{s[m]['median']:.0f} ({s[m]['min']:.0f}-{s[m]['max']:.0f})" for m in METRICS}
        lines.append(f"  {name + ',':8s} max_num_batched_tokens {budget:4d}: longest decode gap {ms['gap_max_ms']} ms, "
                     f"gaps around the arrival p50 {ms['gap_p50_ms']} ms; decoders' TPOT p50 {ms['tpot_p50_ms']}, "
                     f"max {ms['tpot_max_ms']} ms; the long request's TTFT {ms['ttft_ms']} ms")
    return lines


def chunked_figure(data: dict, device: str = ""):
    """Left: each step's wall time against its start (0 = the long prompt's arrival), one run of each setting, the
    long request's first token marked. Right: the longest decode gap and the long request's TTFT, both settings."""
    import matplotlib.pyplot as plt

    from ..figures import plain_log_labels

    c = data["chunked"]
    colors = {"chunked": "tab:blue", "whole": "tab:red"}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw=dict(width_ratios=[2.2, 1]))
    for (name, rs), budget in zip(c["runs"].items(), c["case"]["budgets"]):
        run = rs[len(rs) // 2]
        t = [s["start_s"] - run["arrival_s"] for s in run["steps"]] + [run["steps"][-1]["start_s"] - run["arrival_s"]
                                                                       + run["steps"][-1]["ms"] / 1e3]
        ax.stairs([s["ms"] for s in run["steps"]], t, color=colors[name], lw=1.4,
                  label=f"{name} prefill (max_num_batched_tokens {budget})")
        ax.axvline(run["long_first_token_s"] - run["arrival_s"], color=colors[name], ls=":", lw=1.2)
    ax.axvline(0, color="k", lw=1)
    ax.text(0, 0.02, " long prompt arrives", transform=ax.get_xaxis_transform(), fontsize=8, va="bottom")
    ax.set_yscale("log")
    plain_log_labels(ax.yaxis)
    ax.set_xlabel("time from the long prompt's arrival (s); dotted: its first token")
    ax.set_ylabel("wall time of each engine step (ms, log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Every engine step of one run of each setting", fontsize=9)
    keys = ("gap_max_ms", "ttft_ms")
    for j, name in enumerate(("chunked", "whole")):
        s = c["summary"][name]
        med = [s[k]["median"] for k in keys]
        err = [[m - s[k]["min"] for m, k in zip(med, keys)], [s[k]["max"] - m for m, k in zip(med, keys)]]
        bars = bx.bar([i + 0.38 * (j - 0.5) for i in range(len(keys))], med, 0.38, yerr=err, capsize=3,
                      color=colors[name], label=name)
        bx.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
    bx.set_xticks(range(len(keys)), ["longest gap of a\ndecoding request", "TTFT of the\nlong request"], fontsize=8)
    bx.set_ylabel("ms (median, whiskers min-max)")
    bx.legend(fontsize=8)
    bx.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"Chunked prefill: {c['case']['long_prompt']}-token prompt arriving while {c['case']['decoders']} "
                 f"requests decode — {device}", fontsize=10)
    fig.tight_layout()
    return fig
