# %% [markdown]
# 05 · Timing: where the KV cache wins, and by how much

[← 04 · KV-cache memory](04_kv_cache_memory.ipynb) · [06 · transformers and batching →](06_transformers_and_batching.ipynb) · [cheat sheet](CHEATSHEET.md)

Notebooks 01–04 showed *what* the cache saves (recomputed keys and values, FLOPs, bytes). This one measures the
clock. You will learn:

- how to time decoding fairly: warm-up discarded, the device synchronized before the clock is read, only
  generated tokens counted, the hardware named;
- the two phases of a request, **prefill** (the prompt, all at once) and **decode** (one token per step): why
  the first is compute-bound and the second memory-bound, and what each costs (time to first token, time per
  output token);
- how the time of one decode step grows with the context for **uncached**, **concatenating** (`dynamic`) and
  **preallocated** (`static`) decoding, and why the uncached curve bends;
- total time and tokens/s against the number of generated tokens, and against the batch size;
- how kvlib compares with transformers' `generate`, and with the **weight-streaming floor**: batch-1 decoding
  must read every weight once per token, so no step can beat one pass over the weights;
- what to expect on a GPU, and what was and was not measured on one here.

The full sweeps take minutes, so this notebook **loads** the numbers that `python -m kvlib.bench --out figures/`
saved (JSON + CSV in `figures/`, measured on a quiet 2-core CPU); cells that measure **live**, on whatever
machine runs the notebook, say so and compare with the saved numbers at a stated tolerance. Every timing here is
of a model with GPT-2 small's shapes and random weights: time depends on shapes, not on weight values.
Shape letters: B batch, T_total the context a step attends over, T_prompt the prompt. Runs in under two minutes on
a quiet 2-core CPU.

# %% tags=["nbval-ignore-output"]
import dataclasses
import platform
from importlib.metadata import version

import numpy as np
import torch
import transformers

import kvlib
from kvlib import bench, flops, plotting, timing

print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"kvlib {version('kvlib')}")

# %% [markdown]
## 1. The saved results: what was measured, on what

`kvlib.bench` times everything in one run on one set of weights (fp32, batch 1 unless a sweep says otherwise).
Every measurement is a median over several timed runs, with its min/max and quartiles kept. The weights are
GPT-2's *shapes* with seeded random values: a decode step costs the same whatever numbers sit in the matrices.
Greedy tokens are still compared between methods, as a check that every method computes the same thing.

# %%
meta, records = bench.load_results(plotting.FIGURES_DIR / "timing_cpu.json")
s, sm = meta["settings"], meta["summary"]
print("device:", meta["device"], "| weights:", meta["weights"])
print(f"torch {meta['torch']}, transformers {meta['transformers']}; {len(records)} measurements, each the median "
      f"of {s['repeats']} timed runs after {s['warmup']} untimed warm-up run(s)")
print(f"context up to {s['context_len']} tokens (GPT-2's n_positions is {meta['config']['n_positions']}); "
      f"headline: {s['prompt_len']}-token prompt, {s['new_tokens']} new tokens")
gpu_files = sorted(p for p in plotting.FIGURES_DIR.glob("timing_*.json")
                   if p.stem != "timing_cpu" and "_quick" not in p.stem and "_L" not in p.stem)
print("GPU results in figures/:", [p.name for p in gpu_files] or "none")

# %% [markdown]
## 2. The headline: kvlib, transformers, and the floor

Each method generates the same number of tokens from the same prompt (greedy, no EOS stop, prefill included),
the methods taking turns within each repeat so that background load hits all of them alike. The bars are
medians; the whiskers span the fastest and slowest run.

# %%
fig = plotting.plot_headline(records, title=f"GPT-2 decoding speed, {meta['device']}")

# %%
tps = sm["tokens_per_s"]
for method, value in sorted(tps.items(), key=lambda kv: -kv[1]):
    print(f"{method:<14}{value:8.1f} tok/s  ({1e3 / value:6.1f} ms/token)")
print(f"\nkvlib dynamic ÷ transformers cached: {sm['kvlib_dynamic_over_hf_cached']:.2f}x, "
      f"kvlib static ÷ transformers cached: {sm['kvlib_static_over_hf_cached']:.2f}x")
print(f"cached ÷ uncached, {s['new_tokens']} new tokens: kvlib {sm['kvlib_cached_over_uncached']:.1f}x, "
      f"transformers {sm['hf_cached_over_uncached']:.1f}x")
print("every method produced the same greedy tokens:", all(sm["same_tokens"].values()))

# %%
assert all(sm["same_tokens"].values())
assert tps["dynamic"] > tps["uncached"] and tps["hf-cached"] > tps["hf-uncached"]
assert max(tps["dynamic"], tps["static"]) < tps["weight-floor"]  # no decode step beats one pass over the weights

# %% [markdown]
kvlib and transformers run the same arithmetic on the same weights (the greedy tokens match); kvlib's Conv1D
multiplies with the (in, out) weight layout through `torch.addmm`, and its LM head uses a contiguous (C, V) copy
of the embedding on a CPU: the layouts that stream fastest for one-row products there (see `kvlib/model.py`).

**What the floor means.** Batch-1 decoding multiplies one row vector by every weight matrix: each weight is
read once and used for one multiply-add, so the step is limited by memory bandwidth, not arithmetic. The floor
times exactly that pass (the four weight matrices of every block with `torch.addmm` in the (in, out) layout kvlib
stores, plus the LM head as kvlib computes it), timed in turn with the generations above, so "% of the floor" says
how much of each step is spent on anything else: attention, LayerNorms, GELU, embedding lookups, the cache's own
bookkeeping, Python. Dividing the bytes of the floor by its time gives the bandwidth actually achieved:

# %%
floor = next(r for r in records if r["sweep"] == "floor")
steps = [r["median_s"] for r in records if r["sweep"] == "per_token" and r["method"] == "dynamic"
         and r["context"] < s["prompt_len"] + s["new_tokens"]]
print(f"weight-streaming floor: {sm['floor_ms']:.1f} ms per token; kvlib reaches "
      + ", ".join(f"{k} {v:.0f}%" for k, v in sm["kvlib_percent_of_floor"].items()) + " of its tokens/s")
print(f"decode steps alone (no prefill, no generate loop): {100 * sm['floor_ms'] / 1e3 / np.median(steps):.0f}% (dynamic)")
print(f"floor reads {floor['bytes_per_step'] / 1e6:.0f} MB of weights in {sm['floor_ms']:.1f} ms: "
      f"{floor['bandwidth_gbps']:.0f} GB/s; the machine's {meta['peak_bandwidth_source']}: {meta['peak_bandwidth_gbps']:.0f} GB/s")

# %%
assert floor["bandwidth_gbps"] < meta["peak_bandwidth_gbps"]  # streaming weights cannot beat reading memory flat out

# %% [markdown]
**Where the rest of the step goes.** The gap to the floor is not the matrix products: a decode step runs the
same 49 products as the floor, at the floor's speed. It is everything between them. Those small ops cost far more
here than when timed on their own, because each product streams megabytes of weights through the CPU's caches and
evicts what the next op needs: the interpreter's and PyTorch's dispatcher code and data, which then come back from
memory. The benchmark measures this directly: it times the floor a second time with one `F.gelu` (a few thousand
multiply-adds) after each block product, and nothing else:

# %%
gap_ms = sm["floor_plus_gelu_ms"] - sm["floor_ms"]
n_products = 4 * meta["config"]["n_layer"]
step_ms = 1e3 / max(tps["dynamic"], tps["static"])
print(f"floor {sm['floor_ms']:.2f} ms; with one GELU after each of its {n_products} block products "
      f"{sm['floor_plus_gelu_ms']:.2f} ms: +{gap_ms:.2f} ms, {1e3 * gap_ms / n_products:.0f} us per GELU")
print(f"kvlib's best cached step spends {step_ms - sm['floor_ms']:.2f} ms beyond the floor "
      f"({(step_ms - sm['floor_ms']) / gap_ms:.1f}x what one GELU per product costs); bench attention: "
      f"{meta['config']['attn_implementation']!r} (as transformers' GPT-2; notebooks 02-03 read the eager matmuls)")

# %%
assert gap_ms > 0  # an op between products is never free
assert step_ms > sm["floor_plus_gelu_ms"]  # a real step runs more than one op per product

# %% [markdown]
## 3. Two phases: prefill and decode

A request runs in two phases. The **prefill** feeds the whole prompt in one forward (T_new = T_prompt): every
weight read from memory is used for T_prompt tokens. Each **decode** step feeds one token (T_new = 1): every weight
is read for a single multiply-add per row. The **arithmetic intensity** of a forward, FLOPs per byte moved, says
which one limits it: a machine does at most P FLOP/s and moves at most W bytes/s, so a forward whose intensity is
below P/W (the *ridge point*) waits on memory, and one above it waits on arithmetic.

FLOPs from `kvlib.flops` (notebook 03), bytes from `kvlib.timing` and `kvlib.memory` (notebook 04): the weights
once, plus the K/V the forward writes (prefill) or reads (decode); activations are left out (they mostly stay
in the CPU's caches), which makes both intensities a little high.

# %%
config = dataclasses.replace(kvlib.GPT2Config.from_name("gpt2"), attn_implementation=meta["config"]["attn_implementation"])
assert all(getattr(config, k) == meta["config"][k] for k in ("n_layer", "n_head", "n_embd", "vocab_size", "n_positions"))
model = kvlib.random_gpt2(config)  # the bench's model: GPT-2 small's shapes, random weights (seed 0), SDPA attention
P, kv_token = s["prompt_len"], kvlib.memory.bytes_per_token_for_config(config, torch.float32)
phase_flops = {"prefill": flops.forward_flops(config, P, P, logits_to_keep=1).total,
               "decode": flops.step_flops(config, P + 1, use_cache=True).total}
phase_bytes = {"prefill": timing.weight_bytes(model) + P * kv_token,  # weights once + the prompt's K/V written
               "decode": timing.bytes_per_decode_step(model, P + 1)}  # weights once + the K/V of P + 1 tokens read
intensity = {ph: phase_flops[ph] / phase_bytes[ph] for ph in phase_flops}
for ph in phase_flops:
    print(f"{ph:>7} ({P if ph == 'prefill' else 1:2d} tokens fed): {phase_flops[ph] / 1e9:6.2f} GFLOP, "
          f"{phase_bytes[ph] / 1e6:5.0f} MB -> {intensity[ph]:5.2f} FLOP/B")

# %% [markdown]
In fp32 each weight (4 bytes) does 2 FLOPs per token fed, so the intensity is about T_new / 2 FLOP/B: 0.5 for a
decode step, a little under P / 2 for a prefill (its LM head, a third of the bytes, works for the last token only). The committed bench timed both phases (its `prefill` records and the per-step
records of the same runs), so the rates each phase achieved on this CPU follow:

# %%
prefill_s = next(r["median_s"] for r in records if r["sweep"] == "prefill" and r["method"] == "dynamic")
decode_s = next(r["median_s"] for r in records if r["sweep"] == "per_token" and r["method"] == "dynamic" and r["context"] == P + 1)
achieved = {ph: (phase_flops[ph] / t / 1e9, phase_bytes[ph] / t / 1e9) for ph, t in (("prefill", prefill_s), ("decode", decode_s))}
ridge = achieved["prefill"][0] / floor["bandwidth_gbps"]  # best FLOP/s seen ÷ the bandwidth the floor achieves
for ph, (gflops, gbps) in achieved.items():
    print(f"{ph:>7}: {gflops:5.1f} GFLOP/s, {gbps:5.1f} GB/s")
print(f"ridge point ≈ {achieved['prefill'][0]:.0f} GFLOP/s ÷ {floor['bandwidth_gbps']:.0f} GB/s = {ridge:.1f} FLOP/B; "
      f"decode at {intensity['decode']:.2f} is below it, the {P}-token prefill at {intensity['prefill']:.1f} above")

# %%
assert intensity["decode"] < ridge < intensity["prefill"]  # decode memory-bound, prefill compute-bound
assert achieved["decode"][1] > 0.7 * floor["bandwidth_gbps"]  # decode moves bytes nearly as fast as the floor does
assert achieved["prefill"][1] < 0.5 * floor["bandwidth_gbps"]  # prefill leaves bandwidth unused: arithmetic limits it
assert achieved["prefill"][0] > 3 * achieved["decode"][0]  # and does several times the FLOP/s of a decode step

# %% [markdown]
So the two phases are limited by different things: a longer prompt raises the prefill's FLOPs with little extra
traffic, while decode time is set by the bytes (weights + K/V) each step reads. Serving metrics name them:
**TTFT**, time to first token (the prefill, plus one sampling), and **TPOT**, time per output token (a decode
step). Measured **live** here, with the bench's prompt length, and compared with the committed numbers:

# %% tags=["nbval-ignore-output"]
runs = timing.timed_generations(model, timing.random_prompt(model, 1, P), 17, "dynamic", repeats=3, warmup_tokens=4, progress=False)
ttft, tpot = float(np.median([r[0] for r in runs])), float(np.median([x for r in runs for x in r[1:]]))
print(f"live:      TTFT {1e3 * ttft:6.1f} ms ({P}-token prompt), TPOT {1e3 * tpot:5.1f} ms ({ttft / tpot:.1f} decode steps' worth)")
print(f"committed: TTFT {1e3 * prefill_s:6.1f} ms, TPOT {1e3 * decode_s:5.1f} ms ({prefill_s / decode_s:.1f}); "
      f"live / committed: {ttft / prefill_s:.2f}, {tpot / decode_s:.2f} (above 1: slower than the quiet bench)")

# %% [markdown]
The check is stated loosely, as live timings on a shared machine must be: the live times may be any amount slower
than the quiet bench but not under half of it, and on either machine the prefill of P tokens costs more than one
decode step and less than P of them (feeding the prompt at once is what makes the prefill cheap per token).

# %%
assert ttft > prefill_s / 2 and tpot > decode_s / 2
assert tpot < ttft < P * tpot and decode_s < prefill_s < P * decode_s

# %% [markdown]
## 4. Time per decode step against the context

The cached curves come from real generations, every step timed; the step at context $T_{total}$ reads the
weights once plus the cached keys and values of $T_{total}$ tokens. The uncached "step" at context $T_{total}$
is a whole forward over $T_{total}$ tokens, so it is *sampled*: one forward per length on a geometric grid,
rather than generating a thousand tokens without a cache (that would cost the sum of all those forwards).

# %%
fig = plotting.plot_per_token_latency(records, title=f"Time per decode step, {meta['device']}")

# %%
def per_token(method):
    rows = sorted((r for r in records if r["sweep"] == "per_token" and r["method"] == method), key=lambda r: r["context"])
    return np.array([r["context"] for r in rows]), np.array([r["median_s"] for r in rows])


(xu, yu), (xd, yd), (xs, ys) = per_token("uncached"), per_token("dynamic"), per_token("static")
L = int(xu[-1])
ratio = np.interp(xd, xu, yu) / yd  # uncached ÷ dynamic at every cached context (uncached interpolated)
print(f"at T_total = {L}: uncached {1e3 * yu[-1]:.0f} ms, dynamic {1e3 * yd[-1]:.1f} ms, static {1e3 * ys[-1]:.1f} ms "
      f"per step -> uncached / dynamic = {sm[f'uncached_over_dynamic_at_{L}']:.0f}x")
print(f"from T_total = {xd[0]} to {L}: a cached step grows {yd[-1] / yd[0]:.2f}x (dynamic), {ys[-1] / ys[0]:.2f}x "
      f"(static); an uncached one grows {np.interp(L, xu, yu) / np.interp(xd[0], xu, yu):.0f}x")
print(f"the cache is already {ratio[0]:.1f}x faster at T_total = {xd[0]}, and {ratio[np.searchsorted(xd, 128)]:.1f}x at 128")

# %%
assert sm[f"uncached_over_dynamic_at_{L}"] > 5 and sm[f"uncached_over_static_at_{L}"] > 5
assert yd[-1] / yd[0] < np.interp(L, xu, yu) / np.interp(xd[0], xu, yu)  # cached grows far less than uncached

# %% [markdown]
### Why the uncached curve bends

On log–log axes a slope of 0 means "the time does not depend on the length", 1 means "proportional to it",
2 "quadratic". At short lengths the forward is, like one cached step, a pass over the weights with a few rows
instead of one: reading the weights dominates, and extra rows are nearly free (the prefill of §3, memory-bound
no longer once it has enough rows). As the length grows the multiply-adds (2 × parameters × $T$) take over and
the slope climbs towards 1; attention's $T^2$ term (notebook 03) pushes it further at the longest lengths.

# %%
slopes = np.diff(np.log(yu)) / np.diff(np.log(xu))
for a, b, ta, tb, k in zip(xu, xu[1:], yu, yu[1:], slopes):
    print(f"{a:5d} -> {b:5d} tokens: {1e3 * ta:8.1f} -> {1e3 * tb:8.1f} ms   slope {k:5.2f}")

# %%
assert slopes[-1] > np.median(slopes[: len(slopes) // 2]) + 0.5  # steeper at the end than at the start

# %% [markdown]
## 5. Concatenate or preallocate?

`DynamicKVCache` grows by `torch.cat`, copying the whole cache into a new tensor at every step; `StaticKVCache`
writes the new token into a preallocated buffer. Which is faster depends on the device and the length, so here it
is measured, not assumed:

# %%
def ratio_over(lo, hi):  # median dynamic step time ÷ median static step time over T_total in [lo, hi]
    keep = (xd >= lo) & (xd <= hi)
    return float(np.median(yd[keep]) / np.median(ys[keep]))


ranges = ((int(xd[0]), L // 8), (L // 8 + 1, L // 2), (L // 2 + 1, L))
for lo, hi in ranges:
    r = ratio_over(lo, hi)
    print(f"T_total {lo:4d}..{hi:4d}: dynamic / static step time = {r:.2f} "
          f"({'static' if r > 1 else 'dynamic'} faster by {abs(r - 1) * 100:.0f}%)")
print(f"KV bytes per token: {kv_token:,}; at {L} tokens: {kv_token * L / 1e6:.1f} MB; "
      f"weights read per step: {meta['weight_bytes'] / 1e9:.3f} GB")

# %%
assert all(1 / 2 < ratio_over(lo, hi) < 2 for lo, hi in ranges)

# %% [markdown]
The copy a concatenating cache makes is the size of the cache (printed above: tens of MB at the longest
context), small next to the weights every step reads, so neither cache is twice as fast as the other at any
length on this CPU, and which one is ahead changes with the length and from machine to machine.
The GPU run of `kvlib.bench` adds the same comparison there.

## 6. Total time and tokens/s against the number of generated tokens

Cached totals are the running sums of the per-step times of the same generations (prefill included). Uncached
generation is timed for short runs only; the dashed line sums the sampled uncached forwards instead (a
generation of $N$ tokens runs forwards over $T_{prompt}, \dots, T_{prompt}+N-1$ tokens). Where both exist the
cell below compares them: the sum is an estimate, good to well within a factor of two.

# %%
fig = plotting.plot_generation_length(records, title=f"Generation time against length, {meta['device']}")

# %%
def length(method, status="ok"):
    return {r["tokens"]: r for r in records if r["sweep"] == "length" and r["method"] == method and r["status"] == status}


dyn, unc, est = length("dynamic"), length("uncached"), length("uncached", "estimated")
N, both, n16 = max(dyn), max(n for n in unc if n in est and n > 1), min(n for n in dyn if n >= 16)
print(f"{N} new tokens: dynamic {dyn[N]['median_s']:.1f} s ({dyn[N]['tokens_per_s']:.1f} tok/s), uncached (summed) "
      f"{est[N]['median_s']:.0f} s ({est[N]['tokens_per_s']:.2f} tok/s): {est[N]['median_s'] / dyn[N]['median_s']:.0f}x longer")
print(f"uncached at {both} tokens: timed {unc[both]['median_s']:.2f} s, summed from sampled forwards "
      f"{est[both]['median_s']:.2f} s ({100 * (est[both]['median_s'] / unc[both]['median_s'] - 1):+.0f}%)")
print(f"tokens/s from {n16} to {N} new tokens: dynamic x{dyn[N]['tokens_per_s'] / dyn[n16]['tokens_per_s']:.2f}, "
      f"uncached x{est[N]['tokens_per_s'] / est[n16]['tokens_per_s']:.2f}")

# %%
assert 1 / 2 < est[both]["median_s"] / unc[both]["median_s"] < 2
assert est[N]["median_s"] > 5 * dyn[N]["median_s"]
assert est[N]["tokens_per_s"] / est[n16]["tokens_per_s"] < dyn[N]["tokens_per_s"] / dyn[n16]["tokens_per_s"]

# %% [markdown]
The headline's dynamic-cache rate (§2, 128 new tokens) and the rate printed here (1,009 new tokens) are the same
cache on the same machine at different lengths: a longer generation's later steps read more K/V, so its average
step is slower, and its tokens/s lower.

## 7. Batch size: more rows per weight read

A batch of $B$ sequences multiplies a $B$-row matrix by each weight instead of a vector: the weights are still
read once per step, shared by all rows. If the step stayed purely bandwidth-bound, tokens/s would grow in
proportion to $B$. The data say how far that holds on this CPU:

# %%
fig = plotting.plot_batch_throughput(records, title=f"Cached decoding throughput against batch, {meta['device']}")

# %%
batch = {(r["method"], r["batch_size"]): r for r in records if r["sweep"] == "batch" and r["status"] == "ok"}
B = max(b for _, b in batch)
gain = {m: batch[m, B]["tokens_per_s"] / batch[m, 1]["tokens_per_s"] for m in ("dynamic", "static")}
for m in gain:
    print(f"{m}: batch 1 -> {B}: {batch[m, 1]['tokens_per_s']:.1f} -> {batch[m, B]['tokens_per_s']:.1f} tok/s "
          f"(x{gain[m]:.1f} for {B}x the rows), each step {batch[m, B]['median_s'] / batch[m, 1]['median_s']:.1f}x longer")
print("out-of-memory runs:", [(r["method"], r["batch_size"]) for r in records if r["status"] == "oom"] or "none")

# %%
assert all(2 < g < B for g in gain.values())  # batching pays, but well short of proportional

# %% [markdown]
The largest batch gives several times the tokens/s of batch 1, but well short of B times: each step takes longer.
At batch 16 a step feeds 16 rows through every weight, an intensity about that of a 16-token prefill, past this
CPU's ridge point of §3: the batched step has become compute-bound, like the prefill. (The batch sweep generates 32 tokens per row from a
16-token prompt, which is why its batch-1 rate differs from the headline's.)

## 8. On a GPU

A GPU streams GPT-2 small's weights in a fraction of a millisecond, but eager PyTorch launches one kernel per
operation from Python, and each launch costs the host microseconds. Count the operations of one cached decode
step (views excluded: they launch nothing) on the model itself:

# %%
ops = timing.count_decode_ops(model)
W = timing.weight_bytes(model)
h100 = timing.peak_bandwidth_gbps("NVIDIA H100 80GB HBM3")
stream_ms, kv_ms = W / (h100 * 1e9) * 1e3, kv_token * L / (h100 * 1e9) * 1e3
print(f"one decode step runs {len(ops)} ATen ops ({ops.count('addmm')} addmm); weights {W / 1e9:.3f} GB")
print(f"H100 at its datasheet {h100:.0f} GB/s: weights {stream_ms:.2f} ms, the KV of {L} tokens {kv_ms:.3f} ms")

# %%
assert ops.count("addmm") == 4 * config.n_layer and stream_ms < 1  # 4 products per block; under a millisecond of bytes

# %% [markdown]
**A model, not a measurement.** If each eager launch costs the host about 5 µs (a typical figure for a
PyTorch op on a recent GPU; nothing measured it here), the 154 launches printed above take about 154 × 5 µs ≈ 0.8 ms,
several times the 0.15 ms of bytes. So on a GPU the step time would be set by the launches, not by the bytes: the
per-token curves should stay flat as the context grows, halving the bytes with fp16/bf16 should change little at
batch 1, and the way to go faster is to launch less: `torch.compile` of the fixed-shape decode step
(`kvlib.compiled.fixed_shape_decode_step`, gpt-fast's approach) with `mode="reduce-overhead"` replays the whole
step as one CUDA graph. Fixed shapes have a price: every step attends over the whole preallocated buffer, masked,
so its cost follows the buffer size, not the tokens cached. The GPU run of `kvlib.bench` measures all of this:

# %%
if gpu_files:
    for path in gpu_files:
        gmeta, grecords = bench.load_results(path)
        print(f"{gmeta['device']}: " + ", ".join(f"{k} {v:.0f} tok/s" for k, v in gmeta["summary"]["tokens_per_s"].items()))
        figs = plotting.timing_figures(grecords, gmeta)  # the inline backend shows every figure made in the cell
else:
    print("No GPU results in figures/: this notebook shows CPU measurements only. The GPU paths (CUDA events, "
          "fp16/bf16, torch.compile with CUDA graphs, bandwidth against the datasheet peak) run with "
          "`python -m kvlib.bench --device cuda --out figures/` on a machine with a GPU.")

# %% [markdown]
## 9. Re-measure a small sweep live

This re-times a short version of §4 **live** on whatever runs this notebook (contexts up to 40 tokens, 2 runs
each). Its numbers vary with the machine and its load; the check below holds them to the committed curve with
the same one-sided tolerance as §3 (no faster than half the committed time; slower is allowed), and requires the
cache to win at 40 tokens.

# %% tags=["nbval-ignore-output"]
live = [r.as_dict() for r in timing.per_token_latency_sweep(model, context_len=40, prompt_len=8, uncached_points=4,
                                                             repeats=2, progress=False)]
fig = plotting.plot_per_token_latency(live, title=f"Time per decode step, live, {plotting.device_label('cpu')}")
last = {r["method"]: r["median_s"] for r in live if r["sweep"] == "per_token" and r["context"] == 40}
committed_40 = {"dynamic": float(np.interp(40, xd, yd)), "static": float(np.interp(40, xs, ys)), "uncached": float(np.interp(40, xu, yu))}
for m, v in last.items():
    print(f"live {m:>8} at T_total = 40: {1e3 * v:6.1f} ms (committed {1e3 * committed_40[m]:5.1f} ms, ratio {v / committed_40[m]:.2f})")

# %%
assert all(last[m] > committed_40[m] / 2 for m in last) and last["uncached"] > last["dynamic"]

# %% [markdown]
## Exercises

**Exercise 1.** From the committed per-step times, what tokens/s would kvlib's dynamic cache sustain on decode
steps alone at T_total = 17 and at T_total = 1,024? Why is the second lower?

# %% hidden
# Solution
tps_17, tps_1024 = 1 / yd[0], 1 / yd[-1]
print(f"decode steps alone: {tps_17:.1f} tok/s at T_total = 17, {tps_1024:.1f} tok/s at 1,024 "
      f"(each step reads {kv_token * 1024 / 1e6:.0f} MB more K/V at 1,024)")
assert tps_1024 < tps_17 < tps["weight-floor"]

# %% [markdown]
**Exercise 2.** Compute the arithmetic intensity of a 512-token prefill and of a batch-4 decode step, with the
same byte model as §3. Which side of the ridge point is each on?

# %% hidden
# Solution
pre512 = flops.forward_flops(config, 512, 512, logits_to_keep=1).total / (timing.weight_bytes(model) + 512 * kv_token)
dec4 = flops.step_flops(config, P + 1, use_cache=True, batch_size=4).total / timing.bytes_per_decode_step(model, P + 1, batch_size=4)
print(f"512-token prefill: {pre512:.0f} FLOP/B; batch-4 decode: {dec4:.2f} FLOP/B; ridge ≈ {ridge:.1f} FLOP/B")
assert dec4 < ridge < pre512 and 3.5 * intensity["decode"] < dec4 < 4 * intensity["decode"]

# %% [markdown]
## Summary

- A request has two phases: the prefill (compute-bound: P tokens per weight read) and decode (memory-bound: one
  token per weight read). TTFT is the prefill's time, TPOT a decode step's.
- With a cache a decode step reads the weights once plus the cached K/V; without one it recomputes the whole
  sequence. On a CPU the cached step barely grows with the context while the uncached one grows roughly
  linearly and then faster, so the gap widens with length (§4, §6).
- Batch-1 decoding is bound by memory bandwidth: the honest yardstick is one pass over the weights (§2), and
  batching amortises that pass over more rows until the step turns compute-bound (§7).
- Concatenating and preallocated caches are close on a CPU; measure before choosing (§5).
- On a GPU, GPT-2 small's decode step launches more kernels than its bytes justify (a model, §8); compiling the
  step into one CUDA graph is the remedy, and the GPU run of `kvlib.bench` measures both.

Regenerate every number and figure here with `python -m kvlib.bench --out figures/` (CPU), or with
`--device cuda` on a GPU, then re-run this notebook.

[← 04 · KV-cache memory](04_kv_cache_memory.ipynb) · [06 · transformers and batching →](06_transformers_and_batching.ipynb)
