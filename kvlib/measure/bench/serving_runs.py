"""The serving bench's three measurements, each on one request set and one set of weights:

- `run_offline`: every request submitted at once; each engine in turn, the order rotated every repeat, repeated;
  generated tokens/s with its spread, the engines' counters, every request's tokens compared across engines.
- `run_online`: Poisson arrivals at several request rates (the same arrival pattern, time-scaled), each engine in
  turn at each rate; TTFT, TPOT and normalized latency. An engine whose normalized latency passed
  `saturated_s` is past its capacity: it is not run at the higher rates (its queue only grows).
- `run_profile`: where a kvlib engine step's time goes, beside vLLM's (eager) on the same requests.
`peers` maps "vllm_default"/"vllm_eager" to running vllm_peer.VLLMPeer objects (empty when vLLM is absent).
"""
from __future__ import annotations

import random
import time

from ...model.gpt2 import GPT2
from .engine_driver import serve
from .serving_engines import KvlibEngine, StaticBatcher, hf_continuous_batching
from .serving_profile import profile_kvlib, summarize
from .serving_stats import compare_tokens, latency, spread, throughput


def poisson_arrivals(n: int, rate: float, seed: int = 0) -> list[float]:
    """n arrival times (s) of a Poisson process of `rate` requests/s, the first at 0: the same pattern at every
    rate, scaled by 1/rate."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(1.0) / rate
    return out


def local_engines(model: GPT2, budget_tokens: int, s) -> dict:
    """Factories of fresh kvlib-side engines at one KV budget (in token slots)."""
    knobs = dict(max_num_seqs=s.max_num_seqs, max_num_batched_tokens=s.max_num_batched_tokens)
    return {"kvlib": lambda: KvlibEngine(model, budget_tokens // s.block_size, s.block_size, **knobs),
            "kvlib_compiled": lambda: KvlibEngine(model, budget_tokens // s.block_size, s.block_size,
                                                  enforce_eager=False, **knobs),
            "static_exact": lambda: StaticBatcher(model, budget_tokens, "exact"),
            "static_max": lambda: StaticBatcher(model, budget_tokens, "max")}


def _warm_up(names, factories: dict, peers: dict, requests) -> None:
    """Every engine serves the same requests, cut to at most 16 new tokens each, untimed: first calls allocate, fill
    caches and compile (torch.compile specializes on the first shapes it sees and recompiles for new ones), and this
    shows each engine the run's prompts and batches of every size from all the requests down to one."""
    for name in names:
        _serve_one(name, factories, peers, [(p, min(o, 16)) for p, o in requests])


def _serve_one(name: str, factories: dict, peers: dict, requests, arrivals=None) -> tuple[dict, dict | None]:
    if name in peers:
        return peers[name].serve(requests, arrivals), None
    engine = factories[name]()
    served = serve(engine, requests, arrivals)
    return served, engine.counters()


def run_offline(model: GPT2, requests, budget_tokens: int, s, peers: dict, log=print) -> dict:
    factories = local_engines(model, budget_tokens, s)
    names = ["kvlib", "kvlib_compiled", *[n for n in ("vllm_default", "vllm_eager") if n in peers], "static_exact",
             "static_max"]
    _warm_up(names, factories, peers, requests)
    runs = {n: [] for n in names + (["hf_continuous"] if s.hf else [])}
    tokens, counters = {}, {}
    for r in range(s.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            served, count = _serve_one(name, factories, peers, requests)
            runs[name].append(throughput(served))
            log(f"  repeat {r + 1}/{s.repeats} {name}: {runs[name][-1]['tokens_per_s']:.1f} tok/s")
            if tokens.setdefault(name, served["tokens"]) != served["tokens"]:
                raise RuntimeError(f"{name} gave other tokens in repeat {r + 1} than in repeat 1")
            if count is not None and r == 0:
                counters[name] = count
        if s.hf:
            hf = hf_continuous_batching(model, requests, budget_tokens // s.block_size, s.block_size,
                                        s.max_num_batched_tokens)
            n = sum(len(t) for t in hf["tokens"])
            runs["hf_continuous"].append(dict(tokens=n, elapsed_s=hf["elapsed_s"], tokens_per_s=n / hf["elapsed_s"]))
            tokens["hf_continuous"] = hf["tokens"]
            log(f"  repeat {r + 1}/{s.repeats} hf_continuous: {runs['hf_continuous'][-1]['tokens_per_s']:.1f} tok/s")
    engines = {}
    for name, rs in runs.items():
        engines[name] = dict(runs=rs, tokens_per_s=spread([x["tokens_per_s"] for x in rs]))
        if "steps" in rs[0]:
            engines[name].update(steps=rs[0]["steps"], ms_per_step=spread([x["ms_per_step"] for x in rs]),
                                 refilled_requests=rs[0]["refilled_requests"])
        if name in counters:
            engines[name]["counters"] = counters[name]
    same = {name: compare_tokens(model, requests, tokens["kvlib"], toks) for name, toks in tokens.items()
            if name != "kvlib"}
    return dict(budget_tokens=budget_tokens, request_lengths=[(len(p), o) for p, o in requests], engines=engines,
                same_tokens_as_kvlib=same)


def run_online(model: GPT2, requests, budget_tokens: int, rates, s, peers: dict, log=print) -> dict:
    factories = local_engines(model, budget_tokens, s)
    names = ["kvlib", "kvlib_compiled", *[n for n in ("vllm_default",) if n in peers], "static_exact"]
    _warm_up(names, factories, peers, requests)
    out = {name: [] for name in names}
    for rate in rates:
        arrivals = poisson_arrivals(len(requests), rate, s.seed)
        for name in names:
            if out[name] and out[name][-1]["normalized_latency_s"] > s.saturated_s:
                continue  # saturated at a lower rate
            served, _ = _serve_one(name, factories, peers, requests, arrivals)
            out[name].append(dict(rate=rate, **latency(served), **throughput(served)))
            log(f"  {rate:g} req/s {name}: normalized latency {out[name][-1]['normalized_latency_s']:.3f} s/token, "
                f"TTFT p50 {out[name][-1]['ttft_p50_s']:.2f} s")
    return dict(budget_tokens=budget_tokens, rates=list(rates), request_lengths=[(len(p), o) for p, o in requests],
                saturated_s=s.saturated_s, engines=out)


def run_profile(model: GPT2, requests, budget_tokens: int, s, peers: dict) -> dict:
    """kvlib's engine and vLLM (eager: its ops are torch's and its own, named; compiled code hides them) profiled
    over the same requests, after a warm-up; ms per step in each bucket."""
    factories = local_engines(model, budget_tokens, s)
    _warm_up(["kvlib", "kvlib_compiled"], factories, peers, requests)
    out = {}
    for label, name in ((s.profile_label, "kvlib"), ("kvlib_compiled", "kvlib_compiled")):
        t = time.perf_counter()
        out[label] = profile_kvlib(factories[name](), requests)
        out[label]["profiled_run_s"] = time.perf_counter() - t
    if "vllm_eager" in peers:
        prof = peers["vllm_eager"].profile(requests)
        out["vllm_eager"] = summarize(prof["profile"], prof["steps"])
    return out
