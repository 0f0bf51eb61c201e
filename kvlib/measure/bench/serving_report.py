"""The serving bench's headline numbers (`summary`, stored in serving_cpu.json) and its printed report."""
from __future__ import annotations

import statistics

ENGINE_NAMES = {  # JSON key -> what the report and the figures call it
    "kvlib_before": "kvlib LLMEngine (padded rows, gather)", "kvlib": "kvlib LLMEngine",
    "kvlib_compiled": "kvlib LLMEngine (compiled)",
    "vllm_default": "vLLM (default)", "vllm_eager": "vLLM (eager)",
    "static_exact": "static, prompt + max_new_tokens", "static_max": "static, max length (Orca Max)",
    "hf_continuous": "transformers continuous batching",
}
TARGETS = "kvlib continuous over static (prompt + max_new_tokens) >= 2 with a non-empty queue; identical tokens"


def profiles(data: dict) -> dict:
    """The profiles in the JSON, kvlib's before a change first, then kvlib's, then the peers'."""
    prof = {k: v for k, v in data.get("profile", {}).items() if isinstance(v, dict) and "buckets_ms" in v}
    order = list(ENGINE_NAMES)
    return dict(sorted(prof.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def ratio(engines: dict, a: str, b: str) -> dict | None:
    """a's tokens/s over b's, repeat i with repeat i: the engines take turns within every repeat, so the machine's
    drift (this VM's speed moves by 10-30% over minutes) cancels within a pair. The median of the per-repeat ratios
    and their range; the ratio of the two medians would let one slow repeat of either engine move it."""
    if a not in engines or b not in engines:
        return None
    xa, xb = engines[a]["tokens_per_s"]["values"], engines[b]["tokens_per_s"]["values"]
    paired = [x / y for x, y in zip(xa, xb)]
    return dict(median=statistics.median(paired), min=min(paired), max=max(paired))


def decomposition(engines: dict, fast: str, slow: str) -> dict | None:
    """fast/slow = (slow's steps / fast's steps) x (slow's / fast's median time per step), from the counters."""
    if fast not in engines or slow not in engines or "steps" not in engines[fast] or "steps" not in engines[slow]:
        return None
    f, s = engines[fast], engines[slow]
    fewer = s["steps"] / f["steps"]
    per_step = s["ms_per_step"]["median"] / f["ms_per_step"]["median"]
    return dict(fewer_steps=fewer, per_step_time=per_step, product=fewer * per_step,
                steps=[f["steps"], s["steps"]], ms_per_step=[f["ms_per_step"]["median"], s["ms_per_step"]["median"]])


def summary(data: dict) -> dict:
    out = {"targets": TARGETS}
    for workload, r in data.get("offline", {}).items():
        e = r["engines"]
        same = r["same_tokens_as_kvlib"]
        out[workload] = dict(
            tokens_per_s={k: v["tokens_per_s"]["median"] for k, v in e.items()},
            kvlib_over={k: ratio(e, "kvlib", k) for k in e if k != "kvlib"},
            continuous_over_static=decomposition(e, "kvlib", "static_exact"),
            continuous_over_orca_max=decomposition(e, "kvlib", "static_max"),
            vllm_over_kvlib=decomposition(e, "vllm_default", "kvlib"),
            compiled_over={k: ratio(e, "kvlib_compiled", k) for k in ("kvlib", "vllm_default", "vllm_eager")
                           if "kvlib_compiled" in e and k in e},
            refilled_requests=e["kvlib"].get("refilled_requests"),
            identical_requests={k: f"{v['identical']}/{v['requests']}" for k, v in same.items()},
        )
    return out


def _line(name: str, e: dict) -> str:
    t = e["tokens_per_s"]
    steps = f"{e['steps']:6d} steps x {e['ms_per_step']['median']:6.1f} ms" if "steps" in e else ""
    return f"  {ENGINE_NAMES[name]:34s} {t['median']:7.1f} tok/s ({t['min']:6.1f}-{t['max']:6.1f})  {steps}"


def machine_lines(data: dict) -> list[str]:
    """Per part: the machine, versions, date and run time; vLLM's version and settings or why it is absent."""
    lines = []
    for part, meta in data.get("meta", {}).get("parts", {}).items():
        v = meta["vllm"]
        if "absent" in v or "op" in v:  # absent; or one op of vLLM's (the attention part)
            vtext = v.get("absent") or f"vLLM {v['vllm']}'s {v['op']}"
        else:
            vtext = "; ".join(f"{ENGINE_NAMES[k]}: vLLM {i['vllm']} (torch {i['torch']}, {i['torch_threads']} "
                              f"threads, block_size {i['block_size']})" for k, i in v.items())
        lines.append(f"[{part}] {meta['device']}, {meta['date'][:16]}, {meta['elapsed_s'] / 60:.0f} min; torch "
                     f"{meta['torch']}, transformers {meta['transformers']}; {vtext}")
    return lines


def offline_lines(data: dict, workload: str) -> list[str]:
    r = data["offline"][workload]
    lines = [f"{len(r['request_lengths'])} {workload}-like requests at once, KV budget {r['budget_tokens']} slots; "
             f"median of {len(r['engines']['kvlib']['runs'])} repeats (min-max):"]
    lines += [_line(name, e) for name, e in r["engines"].items()]
    for a, b in (("kvlib_compiled", "vllm_default"), ("kvlib", "vllm_eager"), ("kvlib_compiled", "kvlib")):
        q = ratio(r["engines"], a, b)
        if q:
            lines.append(f"  {ENGINE_NAMES[a]} / {ENGINE_NAMES[b]}: {q['median']:.2f}x (median of the repeats' "
                         f"ratios; {q['min']:.2f}-{q['max']:.2f})")
    return lines


def decomposition_lines(data: dict, workload: str) -> list[str]:
    sm, lines = data["summary"][workload], []
    for key, label in (("continuous_over_static", "kvlib over static (prompt + max_new_tokens)"),
                       ("continuous_over_orca_max", "kvlib over static (Orca Max)"),
                       ("vllm_over_kvlib", "vLLM default over kvlib")):
        d = sm[key]
        if d:
            lines.append(f"  {label}: {d['product']:.2f}x = {d['fewer_steps']:.2f}x fewer steps "
                         f"({d['steps'][1]} vs {d['steps'][0]}) x {d['per_step_time']:.2f} time per step "
                         f"({d['ms_per_step'][1]:.1f} vs {d['ms_per_step'][0]:.1f} ms)")
    return lines


def token_lines(data: dict, workload: str) -> list[str]:
    r, sm = data["offline"][workload], data["summary"][workload]
    lines = [f"  identical tokens to kvlib's, request by request: "
             + ", ".join(f"{ENGINE_NAMES[k]} {v}" for k, v in sm["identical_requests"].items())]
    for k, v in r["same_tokens_as_kvlib"].items():
        for d in v["differences"]:
            lines.append(f"    {ENGINE_NAMES[k]} differs on request {d['request']} at token {d['position']}"
                         + (f": logit gap {d['gap']:.2e} under kvlib's model" if "gap" in d else ""))
    return lines


def latency_lines(data: dict) -> list[str]:
    o = data["online"]
    lines = [f"{len(o['request_lengths'])} {o['workload']}-like requests, Poisson arrivals, KV budget "
             f"{o['budget_tokens']} slots; TTFT and TPOT p50 / p99:"]
    for name, rows in o["engines"].items():
        lines.append(f"  {ENGINE_NAMES[name]}")
        lines += [f"    {x['rate']:4g} req/s: normalized latency {x['normalized_latency_s']:6.3f} s/token, TTFT "
                  f"{x['ttft_p50_s']:6.2f} / {x['ttft_p99_s']:6.2f} s, TPOT {1e3 * x['tpot_p50_s']:5.0f} / "
                  f"{1e3 * x['tpot_p99_s']:5.0f} ms" for x in rows]
    return lines


def profile_lines(data: dict) -> list[str]:
    lines = []
    for name, p in profiles(data).items():
        source = f"; kvlib {p['kvlib']}" if "kvlib" in p else ""
        lines.append(f"{ENGINE_NAMES.get(name, name)}: {p['step_ms']:.1f} ms per step under the profiler "
                     f"({p['steps']} steps{source})")
        lines += [f"  {k:44s} {v:6.1f} ms" for k, v in p["buckets_ms"].items()]
        if p.get("padded_share"):
            lines.append(f"  (of products and attention, on padded positions: about {p['padding_ms_estimate']:.1f}"
                         f" ms, {100 * p['padded_share']:.0f}% of the positions computed)")
    return lines


def decode_lines(data: dict) -> list[str]:
    d = data["decode"]
    lines = [f"decode step against context ({d['case']['new_tokens']} new tokens per request, median of "
             f"{d['repeats']} runs):"]
    for r, row in d["summary"].items():
        for n in row["shortest_ms"]:
            lines.append(f"  {r} rows, {ENGINE_NAMES[n]}: {row['shortest_ms'][n]:.1f} ms at {row['prompts'][0]}-token "
                         f"prompts, +{row['growth_ms'][n]:.1f} ms at {row['prompts'][-1]}")
        if "kvlib_over_vllm" in row:
            lines.append(f"  {r} rows, kvlib's step over vLLM's: " + ", ".join(
                f"{x:.2f}x at {p}" for x, p in zip(row["kvlib_over_vllm"], row["prompts"])))
    return lines


def report(data: dict) -> str:
    lines = machine_lines(data)
    for workload in data.get("offline", {}):
        lines += offline_lines(data, workload) + decomposition_lines(data, workload) + token_lines(data, workload)
        refills = data["summary"][workload]["refilled_requests"]
        lines.append(f"  requests that took a place another had freed: {refills}")
    if "online" in data:
        lines += latency_lines(data)
    if "profile" in data:
        lines += profile_lines(data)
        g = data["profile"].get("gather")
        if g:
            lines.append(f"one layer, batch {g['batch']} x {g['context']} cached tokens: contiguous (write + attend) "
                         f"{g['contiguous_ms']:.3f} ms, paged (write + gather + attend) {g['paged_ms']:.3f} ms "
                         f"({g['paged_over_contiguous']:.1f}x)")
    if "decode" in data:
        lines += decode_lines(data)
    lines += kernel_lines(data)
    return "\n".join(lines)


def kernel_lines(data: dict) -> list[str]:
    """The report lines of the parts that measure kvlib alone (attention, chunked, products), those in `data`."""
    from .serving_attention import attention_lines
    from .serving_chunked import chunked_lines
    from .serving_products import products_lines

    makers = (("attention", attention_lines), ("chunked", chunked_lines), ("products", products_lines))
    return [line for key, make in makers if key in data for line in make(data)]
