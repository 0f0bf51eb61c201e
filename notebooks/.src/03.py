# %% [markdown]
# 03 · O(n²) vs O(n): what exactly does a KV cache save?

[← 02 · Attention with a KV cache](02_attention_with_a_kv_cache.ipynb) · [04 · KV-cache memory →](04_kv_cache_memory.ipynb) · [cheat sheet](CHEATSHEET.md)

"Without a KV cache generation is O(n²), with one it is O(n)" is repeated everywhere, usually without saying
*O of what*. This notebook counts the work, exactly.

What you will learn:
- the FLOPs of every matrix product in a GPT-2 generation step, with and without a cache, as closed formulas
  (`kvlib.flops`), and that PyTorch's `FlopCounterMode` measures **exactly** the same numbers on kvlib's model;
- which cost the slogan describes (the attention of one decode step) and which it does not (the whole step,
  the whole generation), with the exponent of each measured as a slope;
- why uncached generation of GPT-2 small grows like n^2.0something, not n³, up to its 1,024 positions;
- at what length attention overtakes the projections and MLP (far beyond 1,024 tokens);
- that wall time on this CPU follows the same trend (notebook 05 does timing properly).

Shape letters (as in every notebook): B batch, nh heads, hs head size, C = n_embd channels (written d in the
formulas), L layers, V vocabulary, T_new tokens fed to a forward, T_total keys they attend to (t for one step).
Runs in under two minutes on a quiet 2-core CPU.

# %% tags=["nbval-ignore-output"]
import dataclasses
import importlib.metadata
import math

import numpy as np
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode, flop_registry

import kvlib
from kvlib import bench, flops, plotting, timing

print("torch", torch.__version__, "| transformers", transformers.__version__,
      "| kvlib", importlib.metadata.version("kvlib"))

# %% [markdown]
## 1. The model

FLOPs depend on the shapes of the matrices, not on the numbers in them. So this notebook uses a model with
**GPT-2 small's shapes and random weights** (`kvlib.random_gpt2`, seeded): every count below is the real GPT-2
small's. (Notebooks 01, 02 and 06, which show text, use a small GPT-2 trained on Shakespeare instead; it has other
shapes, so it never appears where FLOPs, bytes or timings are counted.) The attention must be kvlib's **eager**
one (explicit `q @ kᵀ` and `weights @ v`): section 3 shows why.

# %%
torch.set_grad_enabled(False)
config = kvlib.GPT2Config.from_name("gpt2")  # 12 layers, 12 heads of 64, 768 channels, 1,024 positions
model = kvlib.random_gpt2(config)
C, L, V, nh = config.n_embd, config.n_layer, config.vocab_size, config.n_head
print(f"C (= d) = {C} channels, L = {L} layers, nh = {nh} heads of hs = {config.head_dim}, "
      f"V = {V} tokens, n_positions = {config.n_positions}; attention: {config.attn_implementation}")

# %% [markdown]
## 2. The claim, stated precisely

Write d for the width (C = n_embd). A generation **step** sees a sequence of t tokens and predicts token t + 1.
Counting a multiply-add as 2 FLOPs, the matrix products of one step are:

| per step | without a cache (re-feed all t tokens) | with a KV cache (feed the newest token) |
|---|---|---|
| Q/K/V + output projections, MLP, per layer | 24·t·d² | 24·d² |
| attention QKᵀ and AV, per layer | 4·t²·d | 4·t·d |
| LM head (only the last position gets logits) | 2·d·V | 2·d·V |
| **one step, order** | **O(t·d² + t²·d)** | **O(d² + t·d)** |
| **n tokens, summed, order** | **O(n²·d² + n³·d)** | **O(n·d² + n²·d)** |

Where the coefficients come from: `c_attn` maps d → 3d (6d² per token), `attn.c_proj` d → d (2d²), the MLP
d → 4d → d (8d² + 8d²): 24d² per token per layer. QKᵀ takes a dot product of d channels (all heads together)
for every query-key pair, AV the same: 2·d + 2·d per pair, with t·t pairs uncached and 1·t cached. kvlib's eager
attention computes the whole t × t score matrix and masks the upper triangle afterwards, so the masked half is
counted: it is work the code does (a fused kernel may skip it, halving only the attention term).

Not counted, here or by `FlopCounterMode`: LayerNorm, softmax, GELU, the 1/√hs scaling, masking, embedding
lookups and the cache's `torch.cat`. They are elementwise, O(t·d) or O(nh·t²) per layer, and each is smaller than
the matrix product next to it by a factor of order hs or d.

**What the slogan "O(n²) vs O(n)" refers to.** Exactly: the *attention* cost of *one decode step* at length n,
n²·d without a cache and n·d with one. It is **not** the per-step total: that is O(n·d² + n²·d) vs O(d² + n·d),
and as long as n < 6d (all of GPT-2's lengths, section 7) the d² terms dominate, so the step behaves like
O(n) vs O(1): growing vs flat. Summed over a whole generation the totals are O(n²·d² + n³·d) vs O(n·d² + n²·d);
for n well below 9d (section 6) those look like n² vs n again, for a different reason (the projections and MLP, not
attention). Section 5 measures all of these exponents.

First, the FLOP convention: `FlopCounterMode` counts an (m, k) @ (k, n) product as 2·m·k·n.

# %%
a, b = torch.randn(3, 5), torch.randn(5, 7)  # (m, k), (k, n)
counter = FlopCounterMode(display=False)
with counter:
    a @ b  # (3, 7)
print("FlopCounterMode:", counter.get_total_flops(), "| 2·m·k·n =", 2 * 3 * 5 * 7)

# %%
assert counter.get_total_flops() == 2 * 3 * 5 * 7

# %% [markdown]
## 3. The formulas against `FlopCounterMode`

`flops.step_flops(config, t, use_cache=...)` evaluates the table above. `flops.measure_step_flops(model, t, ...)`
runs the real forward under `FlopCounterMode` and splits the count by module: attention is what each attention
module counts minus its two projections, "linear" is the blocks' weight matrices, the LM head is the rest. For a
cached step it fills the cache with t − 1 zero positions first (shapes are all that matter) and feeds one token.

# %%
measured_ts = [1, 16, 128, 512]
measured = {(t, c): flops.measure_step_flops(model, t, use_cache=c) for t in measured_ts for c in (False, True)}
formula = {(t, c): flops.step_flops(config, t, use_cache=c) for t, c in measured}
print(f"{'t':>4} {'cache':>5} | {'attention':>13} {'linear':>15} {'lm_head':>11} | measured == formula")
for (t, c), got in measured.items():
    print(f"{t:>4} {c!s:>5} | {got.attention:>13,} {got.linear:>15,} {got.lm_head:>11,} | {got == formula[t, c]}")

# %%
assert all(measured[key] == formula[key] for key in measured)  # every term, to the FLOP

# %% [markdown]
Exact agreement, to the FLOP, for every term. The same holds for a whole `kvlib.generate` call: the closed form
`flops.generation_flops` (prefill plus one-token steps with the cache, full passes without) equals what the
counter sees when it watches the real generation loop.

# %%
prompt = torch.arange(6)[None]  # (1, 6): any 6 token ids; FLOPs depend on the count only
new_tokens = 10
whole = {c: (flops.measure_flops(model, lambda: kvlib.generate(model, prompt, new_tokens, use_cache=c)),
             flops.generation_flops(config, prompt.shape[1], new_tokens, use_cache=c)) for c in (False, True)}
for c, (got, expected) in whole.items():
    print(f"use_cache={c!s:>5}: {got.total:>15,} FLOPs measured, formula agrees: {got == expected}")

# %%
assert all(got == expected for got, expected in whole.values())

# %% [markdown]
**The SDPA trap.** Switch the same shapes to `attn_implementation="sdpa"` (PyTorch's fused
`scaled_dot_product_attention`) and the counter reports *zero* attention FLOPs on CPU: there SDPA runs the fused
kernel `aten._scaled_dot_product_flash_attention_for_cpu`, which has no entry in `FlopCounterMode`'s formula
registry. Everything else still matches, so the count grows only linearly in t and the t² term vanishes from
view — which is why kvlib keeps an explicit-matmul path for counting.

# %%
cpu_kernel = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
sdpa_model = kvlib.random_gpt2(dataclasses.replace(config, attn_implementation="sdpa"))  # same shapes
sdpa = {c: flops.measure_step_flops(sdpa_model, 128, use_cache=c) for c in (False, True)}
print("the CPU SDPA kernel has a FLOP formula:", cpu_kernel in flop_registry)
for c, got in sdpa.items():
    print(f"sdpa, t=128, use_cache={c!s:>5}: attention counted {got.attention:,} of "
          f"{formula[128, c].attention:,}; linear and LM head match: "
          f"{(got.linear, got.lm_head) == (formula[128, c].linear, formula[128, c].lm_head)}")

# %%
assert cpu_kernel not in flop_registry
assert all(got.attention == 0 < formula[128, c].attention for c, got in sdpa.items())
assert all((got.linear, got.lm_head) == (formula[128, c].linear, formula[128, c].lm_head) for c, got in sdpa.items())

# %% [markdown]
## 4. One step, position by position

The formulas now give every position from 1 to n_positions; the measured points of section 3 sit on the lines.
Without a cache a step re-does all earlier work, so its cost grows with t (almost linearly: the t² attention
term is still small); with a cache it stays nearly flat.

# %%
ts = np.arange(1, config.n_positions + 1)
step = {c: [flops.step_flops(config, int(t), use_cache=c) for t in ts] for c in (False, True)}
first, last = {c: step[c][0].total for c in step}, {c: step[c][-1].total for c in step}
saved = {part: getattr(step[False][-1], part) - getattr(step[True][-1], part) for part in ("linear", "attention")}
print(f"step at t={ts[-1]} vs t=1: without cache x{last[False] / first[False]:.0f}, "
      f"with cache x{last[True] / first[True]:.3f}")
print(f"at t={ts[-1]} an uncached step costs {last[False] / last[True]:.0f}x a cached one "
      f"({last[False] / 1e9:.1f} vs {last[True] / 1e9:.3f} GFLOP)")
print(f"of the FLOPs the cache saves at t={ts[-1]}: projections + MLP {saved['linear'] / sum(saved.values()):.0%}, "
      f"attention {saved['attention'] / sum(saved.values()):.0%}")

# %%
assert last[False] / first[False] > 500 and last[True] / first[True] < 1.2  # growing vs nearly flat
assert saved["linear"] > saved["attention"]  # the cache saves mostly projections + MLP at GPT-2's lengths

# %%
fig = plotting.plot_step_flops(
    ts, [f.total for f in step[False]], [f.total for f in step[True]],
    measured={f"FlopCounterMode, {'with' if c else 'without'} cache": (measured_ts, [measured[t, c].total for t in measured_ts])
              for c in (False, True)},
    title="GPT-2 small: FLOPs of one generation step (formula; markers measured)")
plotting.save_figure(fig, "03_step_flops")  # written to figures/ only with KVLIB_WRITE_FIGURES=1

# %% [markdown]
## 5. Which exponent is which

Fit log(FLOPs) against log(length) over t (or n) from 128 to 1,023 and read off the slope, for four costs: the
attention of one step, the whole step, attention summed over a generation of n tokens (1-token prompt), and
the whole generation. First the fit itself, a straight line through log-log points:

# %%
lo, hi = 128, 1023
xs = np.unique(np.geomspace(lo, hi, 16).round().astype(int))  # 16 lengths, evenly spaced in log


def slope(values):  # the exponent k of values ≈ a·x^k, fitted over xs
    return np.polyfit(np.log(xs), np.log(np.asarray(values, dtype=float)), 1)[0]

# %% [markdown]
Then the four costs, with and without a cache:

# %%
slopes = {}
for c in (False, True):
    steps = [flops.step_flops(config, int(t), use_cache=c) for t in xs]
    runs = [flops.generation_flops(config, 1, int(n), use_cache=c) for n in xs]
    slopes[c] = {"one step, attention": slope([f.attention for f in steps]), "one step, total": slope([f.total for f in steps]),
                 "n tokens, attention": slope([f.attention for f in runs]), "n tokens, total": slope([f.total for f in runs])}
print(f"fitted exponent over {lo}..{hi}  {'without cache':>14} {'with cache':>11}")
for cost in slopes[False]:
    print(f"{cost:<30} {slopes[False][cost]:>14.3f} {slopes[True][cost]:>11.3f}")

# %%
no, yes = slopes[False], slopes[True]
assert abs(no["one step, attention"] - 2) < 1e-9 and abs(yes["one step, attention"] - 1) < 1e-9  # the slogan, exactly
assert 1 < no["one step, total"] < 1.2 and 0 < yes["one step, total"] < 0.1  # the step: ~t vs ~flat (d² dominates)
assert 2.9 < no["n tokens, attention"] < 3 and 1.9 < yes["n tokens, attention"] < 2  # summed attention: n³ vs n²
assert 2 < no["n tokens, total"] < 2.2 and 1 < yes["n tokens, total"] < 1.1  # the whole generation: ~n² vs ~n

# %% [markdown]
So "O(n²) vs O(n)" is exactly true of one decode step's attention; for the step as a whole GPT-2 small sees
"O(n) vs O(1)"; and for the whole generation the totals grow like n^2.0x vs n^1.0x — the slogan again, but
because the projections and MLP (24·d² per token and layer) dominate, not attention.

## 6. Cumulative FLOPs on log-log axes

Why is the fitted exponent of uncached generation between 2 and 3, and so close to 2? The total is a sum of three
power laws — the LM head ∝ n, projections + MLP ∝ n²·d², attention ∝ n³·d — and on log-log axes the local slope
of a sum is the FLOP-weighted average of the exponents. The n³ term only catches up with the n² term around
n ≈ 9·d (where (4/3)·L·d·n³ meets 12·L·d²·n²), far beyond 1,024 tokens.

# %%
ns = np.unique(np.geomspace(1, hi, 40).round().astype(int))
labels = {False: "without cache", True: "with KV cache"}
totals = {labels[c]: [flops.generation_flops(config, 1, int(n), use_cache=c).total for n in ns] for c in labels}
fits = {labels[c]: tuple(np.polyfit(np.log(xs), np.log([float(flops.generation_flops(config, 1, int(n), use_cache=c).total)
                                                         for n in xs]), 1)) for c in labels}
fig = plotting.plot_cumulative_flops(ns, totals, fits=fits, fit_range=(lo, hi),
                                     title="GPT-2 small: FLOPs to generate n tokens after a 1-token prompt (formula)")
plotting.save_figure(fig, "03_cumulative_flops")

# %% [markdown]
The local slope at n, d log F / d log n, by a central difference of the exact formula, and the FLOP-weighted
exponent (1 for the LM head, 2 for projections + MLP, 3 for attention) at the longest length:

# %%
def local_slope(n, use_cache=False):
    F = lambda m: flops.generation_flops(config, 1, m, use_cache=use_cache).total
    return math.log(F(n + 1) / F(n - 1)) / math.log((n + 1) / (n - 1))


f = flops.generation_flops(config, 1, hi, use_cache=False)
weighted = (1 * f.lm_head + 2 * f.linear + 3 * f.attention) / f.total
print(f"fitted slope without cache over {lo}..{hi}: {fits['without cache'][0]:.3f} "
      f"(local slope {local_slope(lo):.3f} at n={lo}, {local_slope(hi):.3f} at n={hi})")
print(f"at n={hi}: attention {f.attention / f.total:.1%}, projections + MLP {f.linear / f.total:.1%}, "
      f"LM head {f.lm_head / f.total:.2%}; FLOP-weighted exponent {weighted:.3f}")

# %%
assert 2 < fits["without cache"][0] < 3 and local_slope(lo) <= fits["without cache"][0] <= local_slope(hi)
assert abs(weighted - local_slope(hi)) < 0.01 and f.attention < f.linear

# %% [markdown]
Where summed attention overtakes the summed projections + MLP, exactly, against the leading-order 9·d:

# %%
def summed(n):
    return flops.generation_flops(config, 1, n, use_cache=False)


n_cross = next(n for n in range(1, 20 * C) if summed(n).attention >= summed(n).linear)
print(f"summed attention reaches projections + MLP at n = {n_cross:,} (leading order 9·d = {9 * C:,})")

# %%
assert n_cross > config.n_positions and abs(n_cross - 9 * C) / (9 * C) < 0.01

# %% [markdown]
The fitted uncached slope is just above 2: even at n = 1,023 attention is 12.9% of the FLOPs and the LM head
0.08%, so the FLOP-weighted exponent is 2.128 — the local slope there — and less at shorter n. The cached slope is
just above 1 for the same reason (its attention ∝ n² is a small share). Only past n ≈ 9·d = 6,912 would the
uncached curve bend towards n³: a length GPT-2 small cannot reach.

## 7. Attention's share, and where it overtakes the rest

Per step, attention / (projections + MLP) = 4·T_new·t·d / (24·T_new·d²) = t / 6d: the same with or without a
cache, equal to 1 at t = 6d. Counting the LM head in "the rest" moves the crossover, differently for the two
loops: a cached step pays 2·d·V for a single token, an uncached one spreads it over t tokens. The closed forms
of the four crossovers:

# %%
keys = [(c, lm) for c in (False, True) for lm in (False, True)]
crossover = {(c, lm): flops.attention_crossover(config, use_cache=c, include_lm_head=lm) for c, lm in keys}
predicted = {(False, False): 6 * C, (True, False): 6 * C,
             (True, True): math.ceil(6 * C + V / (2 * L)),  # 4LC·t = 24LC² + 2CV
             (False, True): math.ceil((12 * L * C + math.sqrt((12 * L * C) ** 2 + 8 * L * V)) / (4 * L))}  # 4LC·t² = 24LC²·t + 2CV
for (c, lm), t in crossover.items():
    rest = "projections + MLP + LM head" if lm else "projections + MLP"
    print(f"{'with' if c else 'without':>7} cache, rest = {rest:<28}: attention >= rest from t = {t:,} "
          f"(formula {predicted[c, lm]:,})")

# %%
assert crossover == predicted and min(crossover.values()) > config.n_positions  # never within GPT-2's context

# %% [markdown]
The share against length, one panel per definition of "the rest" (without the LM head the share is the same
with or without a cache, so that panel has one line):

# %%
share_ts = np.arange(1, 8193)
fs = {c: [flops.step_flops(config, int(t), use_cache=c) for t in share_ts] for c in (False, True)}
share = {(c, True): [f.attention / f.total for f in fs[c]] for c in (False, True)}
share.update({(c, False): [f.attention / (f.attention + f.linear) for f in fs[c]] for c in (False, True)})
at_max = fs[True][config.n_positions - 1]
print(f"at t={config.n_positions}, attention is {at_max.attention / at_max.total:.1%} of a cached step "
      f"({at_max.attention / (at_max.attention + at_max.linear):.1%} without counting the LM head)")

# %%
assert share[False, False] == share[True, False]  # without the LM head the share does not depend on caching
assert all(a < b for a, b in zip(share[True, True][1:1024], share[False, True][1:1024]))  # the cached step pays the LM head alone

# %%
panels = {"rest = projections + MLP": {"with or without cache": share[True, False]},
          "rest = projections + MLP + LM head": {"without cache": share[False, True], "with KV cache": share[True, True]}}
fig = plotting.plot_attention_share(share_ts, panels, n_positions=config.n_positions,
                                    crossovers={"with or without cache": crossover[True, False],
                                                "without cache": crossover[False, True], "with KV cache": crossover[True, True]},
                                    title="GPT-2 small: attention's share of one step's FLOPs (formula)")
plotting.save_figure(fig, "03_attention_share")

# %% [markdown]
For GPT-2 small, attention never overtakes the rest within its 1,024 positions, whichever definition you pick:
at the longest sequence it is still a minority of a step's FLOPs. That is why, in section 4, most of what the
cache saves at t = 1,024 is projections and MLP (including the K/V projections of old tokens), not attention.
Only for contexts long compared with 6d does attention dominate, and then the cache's saving per step is mostly
the t²·d → t·d of the slogan.

## 8. Does wall time follow?

The FLOP trend predicts an uncached step that grows with t and a cached one that stays flat. The committed
benchmark (`python -m kvlib.bench --out figures/`, notebook 05) timed exactly that on a quiet 2-core CPU, with
the same GPT-2-small shapes, fp32, batch 1, 16-token prompt and SDPA attention (as transformers' GPT-2 runs; the
eager attention above is for counting). Its time per step at the contexts of a short generation:

# %%
meta, records = bench.load_results(plotting.FIGURES_DIR / "timing_cpu.json")
def bench_ms(method, t):  # the bench's median step time at context t (uncached: interpolated between sampled lengths)
    rows = sorted((r["context"], r["median_s"]) for r in records if r["sweep"] == "per_token" and r["method"] == method)
    return 1e3 * float(np.interp(t, [c for c, _ in rows], [s for _, s in rows]))
contexts = [17, 24, 32, 40, 48]
committed = {m: [bench_ms(m, t) for t in contexts] for m in ("uncached", "dynamic")}
print(f"committed bench ({meta['device']}): ms per decode step")
for t, u, d in zip(contexts, committed["uncached"], committed["dynamic"]):
    print(f"  t = {t:2d}: without cache {u:5.1f} ms, with KV cache {d:5.1f} ms ({u / d:.1f}x)")

# %%
assert committed["uncached"] == sorted(committed["uncached"])  # grows with t
assert all(u > d for u, d in zip(committed["uncached"], committed["dynamic"]))  # the cache is faster at every t

# %% [markdown]
Now the same measurement **live**, on whatever machine runs this notebook: one generation of 33 tokens after the
same 16-token prompt, every step timed (`kvlib.timing.timed_generations`, 2 runs after a short warm-up). Live
numbers move with the machine's load, so the check is one-sided and stated: the live median step time must not
be under half the committed one (that would mean the committed numbers are stale), while any slowdown is allowed
(on a 2-core machine shared with other work, steps measured 10-25x slower than the quiet bench); and the cache
must win by at least half the committed margin, a ratio that load changes far less.

# %% tags=["nbval-ignore-output"]
sdpa_model = kvlib.random_gpt2(dataclasses.replace(config, attn_implementation="sdpa"))
ids = timing.random_prompt(sdpa_model, 1, 16)  # (1, 16)
live = {m: np.median(timing.timed_generations(sdpa_model, ids, 33, m, repeats=2, warmup_tokens=4, progress=False), axis=0)[1:]
        for m in ("uncached", "dynamic")}  # per-step medians; step i sees t = 16 + i tokens
live_ms = {m: [1e3 * live[m][t - 17] for t in contexts] for m in live}
for m in live:
    print(f"live, {m:>8}: " + ", ".join(f"{v:.0f}" for v in live_ms[m]) + f" ms at t = {contexts} "
          f"(committed: {', '.join(f'{v:.0f}' for v in committed[m])})")

# %% tags=["nbval-ignore-output"]
fig = plotting.plot_step_times(np.arange(17, 49), {"live, without cache": live["uncached"], "live, with KV cache": live["dynamic"]},
                               title=f"GPT-2 small shapes, fp32, batch 1: time per step, live\n{plotting.device_label('cpu')}")
plotting.save_figure(fig, "03_step_times_cpu")
ratio = {m: np.median(live_ms[m]) / np.median(committed[m]) for m in live}
print("live / committed median step time:", {m: f"{r:.2f}" for m, r in ratio.items()}, "(above 1: slower than the bench)")

# %%
assert all(r > 1 / 2 for r in ratio.values())  # the tolerance stated above
assert np.median(live_ms["uncached"]) / np.median(live_ms["dynamic"]) > 0.5 * np.median(committed["uncached"]) / np.median(committed["dynamic"])

# %% [markdown]
## Exercises

**Exercise 1.** A GPT-2 medium (d = 1,024, L = 24, V = 50,257) generates with a cache. At what t does one cached
step's attention reach its projections + MLP? Predict from t = 6d, then check with `flops.attention_crossover`.

# %% hidden
# Solution
medium = kvlib.GPT2Config.from_name("gpt2-medium")
t_medium = flops.attention_crossover(medium, use_cache=True, include_lm_head=False)
print(f"GPT-2 medium: attention >= projections + MLP from t = {t_medium:,} = 6d = {6 * medium.n_embd:,}")
assert t_medium == 6 * medium.n_embd == 6144

# %% [markdown]
**Exercise 2.** How many times more FLOPs does generating 512 tokens after a 1-token prompt cost without a cache
than with one, on GPT-2 small? First estimate it from the table of section 2 leaving attention out (projections +
MLP and the LM head per step), then compute it exactly with `flops.generation_flops`.

# %% hidden
# Solution
d, L_, V_ = config.n_embd, config.n_layer, config.vocab_size
estimate = sum(24 * L_ * d * d * t + 2 * d * V_ for t in range(1, 513)) / (512 * (24 * L_ * d * d + 2 * d * V_))
exact = flops.generation_flops(config, 1, 512, use_cache=False).total / flops.generation_flops(config, 1, 512, use_cache=True).total
print(f"512 tokens: uncached / cached = {exact:.0f}x exactly, {estimate:.0f}x without attention")
# Not 256x (n / 2): the LM head's 2dV per step is paid by both loops and is 31% of a cached step.
assert estimate < exact < 1.05 * estimate

# %% [markdown]
## Summary

- One GPT-2 step costs 24·t·d²·L + 4·t²·d·L + 2·d·V FLOPs without a cache and 24·d²·L + 4·t·d·L + 2·d·V with one;
  `FlopCounterMode` agrees to the FLOP on kvlib's eager attention (and sees no attention at all through SDPA on CPU).
- "O(n²) vs O(n)" is precisely the attention of one decode step. The whole step is O(n·d² + n²·d) vs
  O(d² + n·d) — in practice growing vs flat — and a whole generation O(n²·d² + n³·d) vs O(n·d² + n²·d).
- For GPT-2 small the d² terms dominate everywhere it can run: uncached generation fits a slope just above 2,
  not 3, and attention reaches the projections + MLP only at 4,608 = 6d tokens (later, counting the LM head),
  far beyond its 1,024 positions.
- Wall time follows: the committed bench and the live run both show the uncached step growing and the cached one
  flat. The cache trades FLOPs for memory: notebook 04 measures what it costs, notebook 05 what it buys in time.

[← 02 · Attention with a KV cache](02_attention_with_a_kv_cache.ipynb) · [04 · KV-cache memory →](04_kv_cache_memory.ipynb)
