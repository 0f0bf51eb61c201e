# %% [markdown]
# 06 · The KV cache inside transformers, and batched generation with padding

[← 05 · Timing](05_timing.ipynb) · [cheat sheet](CHEATSHEET.md) · (next: notebook 07, paged caches and serving, where present)

The earlier notebooks built a KV cache from scratch in `kvlib`. This one puts it next to the library most people
actually run, and then feeds it more than one prompt at a time. You will learn:

1. **What transformers 5 keeps in `past_key_values`**: a `DynamicCache` or `StaticCache` object with one layer
   object per block, `layers[i].keys` / `.values` shaped `(batch, num_heads, seq_len, head_dim)`, and
   `get_seq_length()`. We check that kvlib's cache holds *the same tensors*, layer by layer.
2. **Moving a cache between libraries** (`kvlib.hf`): prefill in one, continue in the other, same tokens.
3. **The old tuple-of-tuples API** that many posts still show, why it no longer runs, and what replaced it.
4. **What `use_cache` buys in `transformers.generate`**, timed.
5. **Batched generation with left padding**: an attention mask, per-row positions, rows that stop at EOS on their
   own, masks that are refused, and the memory that padding costs.

Every claim below is an `assert`: if it were false, this notebook would not run. Shape letters: B batch, nh heads,
T tokens, hs head size, L layers (the [cheat sheet](CHEATSHEET.md)). Runs in under two minutes on a quiet 2-core CPU.

# %% tags=["nbval-ignore-output"]
import platform

import torch
import transformers

import kvlib

print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}")

# %% [markdown]
## 0. One set of weights, two libraries

The model is **a small GPT-2 trained on Shakespeare** that ships with kvlib (`kvlib.load_gpt2("shakespeare")`: 4
layers, 8 heads of 16, 128 channels, the GPT-2 tokenizer), so the text below is text. `model.to_hf()` copies the
very same weights into a `transformers.GPT2LMHeadModel`, so whatever differs below is the *code*, never the
weights. With real GPT-2 weights on your machine, `kvlib.load_gpt2("gpt2")` runs every cell unchanged. (Section 5
times `generate`, so it uses GPT-2 small's shapes instead, with random weights, as notebooks 03–05 do.)

# %%
from transformers import DynamicCache, StaticCache
from transformers.utils import logging as hf_logging

from kvlib.batching import (AFTER_EOS_SLOT, SLOT_LABELS, left_pad, padding_waste, slot_kinds, unpad_rows)
from kvlib.hf import from_dynamic_cache, to_dynamic_cache, to_static_cache
from kvlib.memory import format_bytes
from kvlib.plotting import plot_batch_slots, save_figure

hf_logging.set_verbosity_error()  # generate() logs hints about generation flags; they are not the lesson
torch.manual_seed(0)

model, tokenizer = kvlib.load_gpt2("shakespeare")
hf = model.to_hf()
PAD = tokenizer.eos_token_id  # GPT-2 has no padding token; its EOS id (50256) is the usual stand-in
config = model.config
print(f"n_layer={config.n_layer}, n_head={config.n_head}, n_embd={config.n_embd}, head_dim={config.head_dim}, pad id {PAD}")
print("transformers model:", type(hf).__name__, "| attention:", hf.config._attn_implementation)

# %%
def hf_greedy(input_ids, max_new_tokens, **kwargs):
    # Greedy, no EOS stop (every run has the same length), padding with PAD: the same rules kvlib.generate follows.
    return hf.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                       pad_token_id=PAD, **kwargs)

# %% [markdown]
## 1. `past_key_values` in transformers 5: a `DynamicCache`

Run the prompt through both models, each with an empty cache. transformers' `DynamicCache` grows by
`torch.cat` along the sequence axis, exactly like `kvlib.DynamicKVCache`; it keeps one `DynamicLayer` per block,
and each layer exposes `.keys` and `.values`.

# %%
prompt = "Now is the winter of our discontent"
ids = torch.tensor([tokenizer.encode(prompt)])  # (1, T_prompt)
T_prompt = ids.shape[1]
hf_cache = DynamicCache(config=hf.config)
kv_cache = kvlib.DynamicKVCache()
with torch.inference_mode():
    hf_logits = hf(ids, past_key_values=hf_cache, use_cache=True).logits  # fills hf_cache in place
    kv_logits = model(ids, kv_cache)  # fills kv_cache in place
print("ids:", ids.tolist())
print(type(hf_cache).__name__, "with", len(hf_cache.layers), "layers of", type(hf_cache.layers[0]).__name__)
print("layers[0].keys:", tuple(hf_cache.layers[0].keys.shape), "| kvlib key_cache[0]:", tuple(kv_cache.key_cache[0].shape))
print("get_seq_length():", hf_cache.get_seq_length(), "(transformers),", kv_cache.get_seq_length(), "(kvlib)")

# %%
assert hf_cache.get_seq_length() == kv_cache.get_seq_length() == T_prompt
assert len(hf_cache.layers) == len(kv_cache) == config.n_layer

# %% [markdown]
Same shapes; now the same *numbers*? Both libraries compute K and V with the same matrix products, so in fp32
they should agree to rounding. We demand agreement within `KV_ATOL = 1e-4` for every layer, keys and values.

# %%
KV_ATOL = 1e-4  # fp32 tolerance for K/V and logits (summation order may differ between the libraries)
def max_kv_difference(kv_cache, hf_cache):
    # Largest |kvlib - transformers| over every layer's filled keys and values.
    worst = 0.0
    for i, layer in enumerate(hf_cache.layers):
        T = kv_cache.get_seq_length(i)
        worst = max(worst, (kv_cache.key_cache[i][:, :, :T] - layer.keys[:, :, :T]).abs().max().item(),
                    (kv_cache.value_cache[i][:, :, :T] - layer.values[:, :, :T]).abs().max().item())
    return worst
kv_diff = max_kv_difference(kv_cache, hf_cache)
logit_diff = (kv_logits - hf_logits).abs().max().item()
print(f"all {config.n_layer} layers' K/V within {KV_ATOL:g}:", kv_diff < KV_ATOL)
print(f"logits within {KV_ATOL:g}:", logit_diff < KV_ATOL)

# %%
assert kv_diff < KV_ATOL and logit_diff < KV_ATOL

# %% tags=["nbval-ignore-output"]
print(f"measured: max K/V difference {kv_diff:.2e}, max logit difference {logit_diff:.2e}")

# %% [markdown]
## 2. `StaticCache`: preallocated, filled from the left

`StaticCache(config=..., max_cache_len=N)` reserves `N` slots per layer up front (on its first update) and writes
new tokens in place, as `kvlib.StaticKVCache` does. Two differences worth knowing:

- its `layers[i].keys` is the **whole** buffer, unfilled slots (zeros) included; only the first
  `get_seq_length()` slots are real. Compare the filled prefix.
- its `get_seq_length()` returns a 0-d **tensor** (a counter that `torch.compile` can trace), not an `int`.

# %%
MAX_CACHE_LEN = 32
static = StaticCache(config=hf.config, max_cache_len=MAX_CACHE_LEN)
with torch.inference_mode():
    hf(ids, past_key_values=static, use_cache=True)
filled = int(static.get_seq_length())
print("layers[0].keys:", tuple(static.layers[0].keys.shape), "| get_seq_length():", repr(static.get_seq_length()))
print(f"filled slots {filled} of {MAX_CACHE_LEN}; unfilled slots all zero:",
      all(not layer.keys[:, :, filled:].any() for layer in static.layers))
print(f"filled prefix equals kvlib's K/V within {KV_ATOL:g}:", max_kv_difference(kv_cache, static) < KV_ATOL)

# %%
assert static.layers[0].keys.shape[-2] == MAX_CACHE_LEN and filled == T_prompt
assert isinstance(static.get_seq_length(), torch.Tensor) and static.get_seq_length().dim() == 0
assert all(not layer.keys[:, :, filled:].any() and not layer.values[:, :, filled:].any() for layer in static.layers)
assert max_kv_difference(kv_cache, static) < KV_ATOL

# %% [markdown]
`generate(..., cache_implementation="static")` builds the `StaticCache` itself. After generating, the cache holds
one token fewer than the output: the last generated token was sampled but never fed back through the model.

# %%
N_NEW = 10
out = hf_greedy(ids, N_NEW, cache_implementation="static", return_dict_in_generate=True)
pkv = out.past_key_values
print(type(pkv).__name__, "| layers[0].keys:", tuple(pkv.layers[0].keys.shape),
      "| get_seq_length():", int(pkv.get_seq_length()), "| output length:", out.sequences.shape[1])
# kvlib, fed the same tokens, holds the same K/V as the filled prefix of transformers' buffers.
kv_cache = kvlib.DynamicKVCache()
with torch.inference_mode():
    model(out.sequences[:, :-1], kv_cache)
print(f"filled prefix equals kvlib's K/V within {KV_ATOL:g}:", max_kv_difference(kv_cache, pkv) < KV_ATOL)
reference = kvlib.generate(model, ids, N_NEW, cache="static")  # kvlib alone, all the way

# %%
assert isinstance(pkv, StaticCache) and int(pkv.get_seq_length()) == out.sequences.shape[1] - 1
assert max_kv_difference(kv_cache, pkv) < KV_ATOL
assert torch.equal(out.sequences, reference)  # and the same tokens

# %% [markdown]
## 3. Moving a cache between the libraries

Since both sides store `(B, nh, T, hs)` per layer, a conversion is just a copy of tensors. `kvlib.hf` has:

- `to_dynamic_cache(kvlib_cache) -> DynamicCache` (and `to_static_cache(kvlib_cache, hf_config, max_cache_len)`),
- `from_dynamic_cache(hf_cache, kind="dynamic" | "static", config=model.config) -> kvlib cache`
  (it also accepts a `StaticCache`, taking its filled prefix).

The test of a conversion is whether a generation **started in one library continues identically in the other**.
Reference: `kvlib.generate` all the way (`reference`, computed above).

# %%
# kvlib prefills the prompt and picks the first new token ...
cache = kvlib.make_cache(model, "static", batch_size=1, max_seq_len=T_prompt + N_NEW)
with torch.inference_mode():
    first = kvlib.prefill(model, ids, cache).argmax(-1)  # (1,)
# ... transformers continues from kvlib's cache: it only has to feed the one token the cache does not hold yet.
dc = to_dynamic_cache(cache)
print(type(dc).__name__, "| get_seq_length():", dc.get_seq_length(), "| layers[0].keys:", tuple(dc.layers[0].keys.shape))
continued = hf_greedy(torch.cat([ids, first[:, None]], dim=1), N_NEW - 1, past_key_values=dc)

print("kvlib prefill -> transformers continues == kvlib alone:", torch.equal(continued, reference))
assert torch.equal(continued, reference)
print(repr(tokenizer.decode(reference[0, T_prompt:].tolist())), "<- the continuation")

# %%
# The other way: transformers generates the first 4 tokens, kvlib takes over its cache and decodes the rest.
out = hf_greedy(ids, 4, return_dict_in_generate=True)
cache = from_dynamic_cache(out.past_key_values, kind="static", config=config, max_seq_len=T_prompt + N_NEW)
print(type(cache).__name__, "| tokens cached:", cache.get_seq_length(), "| output so far:", out.sequences.shape[1])

seq = out.sequences
with torch.inference_mode():
    while seq.shape[1] < reference.shape[1]:
        token = kvlib.decode_one_token(model, seq[:, -1], cache).argmax(-1)  # feed only the newest token
        seq = torch.cat([seq, token[:, None]], dim=1)
print("transformers prefill -> kvlib continues == kvlib alone:", torch.equal(seq, reference))
assert torch.equal(seq, reference)

# %% [markdown]
Wrong input gets a clear error, not a silent mismatch:

# %%
for call in (lambda: to_dynamic_cache(dc),                        # already a transformers cache
             lambda: from_dynamic_cache(dc, kind="paged"),         # no such kind
             lambda: from_dynamic_cache(dc, kind="static"),        # static needs the config to size its buffers
             lambda: from_dynamic_cache(DynamicCache())):          # nothing cached yet
    try:
        call()
        raise AssertionError("no error raised")
    except (TypeError, ValueError) as e:
        print(f"{type(e).__name__}: {e}")

# %% [markdown]
## 4. The legacy API: tuples of tuples

Posts written for transformers 4 (and the GPT-2 code they quote) pass the cache around as a **tuple of tuples**:

```python
# transformers 4.x — does not run in transformers 5
out = model(input_ids, use_cache=True)
past = out.past_key_values          # ((k_0, v_0), (k_1, v_1), ...): one (key, value) pair per layer
out = model(next_token, past_key_values=past)
# inside GPT2Attention.forward(..., layer_past=past[i]):  key = torch.cat((past_key, key), dim=-2)

cache = DynamicCache.from_legacy_cache(past)   # the 4.36+ bridge from tuples to a Cache object ...
past = cache.to_legacy_cache()                 # ... and back
```

Each layer's attention received its own `layer_past` pair and returned a new, longer pair; the model returned a
fresh tuple every step. transformers 4.36 introduced `Cache` objects and the bridge methods above; **transformers 5
removed the tuple format and both bridge methods**. What replaced them:

- `past_key_values` is always a `Cache` (`DynamicCache`, `StaticCache`, ...), updated in place by
  `cache.update(key_states, value_states, layer_idx)` inside each attention layer;
- per-layer tensors are `cache.layers[i].keys` / `.values`;
- to wrap tuples from old code, pass them to the constructor: `DynamicCache(((k_0, v_0), (k_1, v_1), ...))`.

Checked against the installed version:

# %%
print("transformers", transformers.__version__)
print("DynamicCache.from_legacy_cache exists:", hasattr(DynamicCache, "from_legacy_cache"))
print("DynamicCache.to_legacy_cache exists:  ", hasattr(DynamicCache, "to_legacy_cache"))
legacy = tuple((layer.keys, layer.values) for layer in hf_cache.layers)  # the old format, built by hand
try:
    with torch.inference_mode():
        hf(ids[:, :1], past_key_values=legacy)
    raise AssertionError("transformers accepted a tuple cache")
except AttributeError as e:  # GPT-2 calls past_key_values.get_seq_length() on it
    print("a tuple as past_key_values fails:", f"{type(e).__name__}: {e}")
wrapped = DynamicCache(legacy)  # the transformers 5 replacement for from_legacy_cache
print("DynamicCache(tuples).get_seq_length():", wrapped.get_seq_length())

# %%
assert not hasattr(DynamicCache, "from_legacy_cache") and not hasattr(DynamicCache, "to_legacy_cache")
assert wrapped.get_seq_length() == T_prompt

# %% [markdown]
## 5. `generate` with and without `use_cache` in transformers

`use_cache=False` makes transformers re-run the whole sequence at every step, as notebook 01 did by hand. Same
tokens, more work. Timing is a matter of shapes, so this section uses **GPT-2 small's shapes with random weights**
(as notebooks 03–05), converted to transformers, with the committed benchmark's 16-token prompt. First the tokens:

# %%
import time

import numpy as np

from kvlib import bench, plotting, timing

small = kvlib.random_gpt2(kvlib.GPT2Config.from_name("gpt2"))
hf_small = small.to_hf()
ids16 = timing.random_prompt(small, 1, 16)  # (1, 16): the bench's prompt length
def generate_small(use_cache, n):
    return hf_small.generate(ids16, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=PAD, use_cache=use_cache)
same = torch.equal(generate_small(True, 32), generate_small(False, 32))
print("same 32 greedy tokens with and without the cache:", same)

# %%
assert same  # the cache changes the speed, never the greedy tokens

# %% [markdown]
Then the clock, **live** on this machine (the best of 2 runs per length). The committed benchmark measured
transformers' cached `generate` at 31.7 tok/s over 128 tokens on a quiet 2-core CPU (`figures/timing_cpu.json`,
notebook 05); a live run on a machine shared with other work is slower, so the stated check is one-sided: the
live cached rate must not exceed twice the committed one, and the cache must win at every length.

# %% tags=["nbval-ignore-output"]
def tokens_per_s(use_cache, n, runs=2):
    best = min(timing.measure(lambda: generate_small(use_cache, n), "cpu", repeats=runs, warmup=0))
    return n / best

generate_small(True, 2)  # warm-up: first-call allocations and lazy initialisation are not the lesson
sweep = (8, 32)
rates = {"use_cache=True": [tokens_per_s(True, n) for n in sweep], "use_cache=False": [tokens_per_s(False, n) for n in sweep]}
meta, _ = bench.load_results(plotting.FIGURES_DIR / "timing_cpu.json")
committed = meta["summary"]["tokens_per_s"]["hf-cached"]
for i, n in enumerate(sweep):
    print(f"live, {n:2d} new tokens: {rates['use_cache=True'][i]:5.1f} tok/s with cache, {rates['use_cache=False'][i]:5.1f} without")
print(f"committed bench, 128 new tokens: {committed:.1f} tok/s with cache")
fig = plotting.plot_generate_use_cache(sweep, rates, title=f"transformers generate, GPT-2 small shapes, batch 1, fp32, live\n{plotting.device_label('cpu')}")
plotting.save_figure(fig, "06_hf_generate_use_cache")  # written to figures/ only with KVLIB_WRITE_FIGURES=1

# %%
assert max(rates["use_cache=True"]) < 2 * committed
assert all(c > u for c, u in zip(rates["use_cache=True"], rates["use_cache=False"]))

# %% [markdown]
Without the cache every step re-runs the whole sequence, so the work per new token grows with the output; with
the cache each step feeds one token. Short runs like these spend a larger share of their time in the prefill and
in `generate`'s set-up than the bench's 128 tokens, which is one more reason their rates sit below it.

## 6. Batched generation: prompts of different lengths

A batch is one `(B, T)` tensor, so shorter prompts must be padded to the longest. For generation, pad on the
**left**: then every row's last real token sits in the same (last) column, and every new token is appended at the
same column for all rows. `kvlib.batching.left_pad` builds `input_ids` and an `attention_mask` with transformers'
meaning (1 = token, 0 = padding).

# %%
prompts = ["Now is the winter of our discontent", "Juliet.\nO Romeo, Romeo!", "To be, or not to be", "Friends"]
encoded = [tokenizer.encode(p) for p in prompts]
batch_ids, batch_mask = left_pad(encoded, pad_token_id=PAD)
print("prompt lengths:", [len(e) for e in encoded])
print("input_ids:\n", batch_ids)
print("attention_mask:\n", batch_mask)

# %% [markdown]
Padding alone is not enough. Two things must ignore it:

- **attention**: no real token may attend to a padding slot. kvlib combines the causal mask with the padding mask
  (`causal[None, None] & keep[:, None, None, :]`).
- **positions**: GPT-2 adds a learned position embedding. A row padded with 3 slots must still start its prompt at
  position 0, so positions are counted per row: `attention_mask.cumsum(-1) - 1` (padding clamped to 0).

Pass the mask to `kvlib.generate(..., attention_mask=mask)` (or to the model's forward) and kvlib does both.

# %%
positions = (batch_mask.cumsum(-1) - 1).clamp(min=0)  # what kvlib derives from the mask
print("per-row position ids:\n", positions)

# The padded batch's logits at each row's real positions equal that prompt's logits computed alone.
with torch.inference_mode():
    batched_logits = model(batch_ids, attention_mask=batch_mask)  # (B, T, V)
    worst = max((batched_logits[i, -len(e):] - model(torch.tensor([e]))[0]).abs().max().item()
                for i, e in enumerate(encoded))
print(f"every row's logits equal its solo logits within {KV_ATOL:g}:", worst < KV_ATOL)
assert worst < KV_ATOL

# %% [markdown]
Now generate. Each row of the batch must produce exactly the tokens its prompt produces alone: with a dynamic
cache, with a static cache, and without a cache.

# %%
N_BATCH = 8
solo = [kvlib.generate(model, torch.tensor([e]), N_BATCH)[0].tolist() for e in encoded]
for mode in ("dynamic", "static", "uncached"):
    out = kvlib.generate(model, batch_ids, N_BATCH, attention_mask=batch_mask, use_cache=mode != "uncached",
                         cache="static" if mode == "static" else "dynamic")
    same = unpad_rows(out, batch_mask) == solo  # strip each row's left padding, compare with the solo run
    print(f"{mode:9s}: every row == its solo run: {same}")
    assert same
batched = out
for e, row in zip(encoded, unpad_rows(batched, batch_mask)):
    print(repr(tokenizer.decode(row[len(e):])), "  <- after", repr(tokenizer.decode(e)))

# %% [markdown]
transformers, given the same weights and the same padded batch, agrees token for token. (`generate` derives
per-row positions from the mask for you.)

# %%
hf_batched = hf_greedy(batch_ids, N_BATCH, attention_mask=batch_mask)
print("transformers generate == kvlib generate on the padded batch:", torch.equal(hf_batched, batched))
assert torch.equal(hf_batched, batched)

# %% [markdown]
**A trap when you call the model yourself.** transformers' GPT-2 *forward* does not derive positions from the
mask: it numbers columns `0..T-1` for every row (only `generate` computes `cumsum - 1`). Call
`hf(input_ids, attention_mask=mask)` on a left-padded batch and the padded rows see shifted positions; pass
`position_ids` too and they are right again.

# %%
with torch.inference_mode():
    without_pos = hf(batch_ids, attention_mask=batch_mask).logits
    with_pos = hf(batch_ids, attention_mask=batch_mask, position_ids=positions).logits
row = min(range(len(encoded)), key=lambda i: len(encoded[i]))  # the most padded row
n = len(encoded[row])
with torch.inference_mode():
    alone = hf(torch.tensor([encoded[row]])).logits[0]
gap_without = (without_pos[row, -n:] - alone).abs().max().item()
gap_with = (with_pos[row, -n:] - alone).abs().max().item()
print(f"row {row} ({n} token(s), {batch_ids.shape[1] - n} padding): differs from solo without position_ids:",
      gap_without > 1e-2, "| matches with position_ids:", gap_with < KV_ATOL)
assert gap_without > 1e-2 and gap_with < KV_ATOL

# %% [markdown]
## 7. Rows that stop on their own

With `eos_token_id`, a row that emits EOS is **finished**: from then on it receives `pad_token_id` while the
other rows go on, and generation ends only when every row has finished. To see it with any weights, we choose as
"EOS" a token that one row actually emits early and that no other row emits at all.

# %%
N_EOS = N_BATCH
runs = [s[len(e):] for s, e in zip(solo, encoded)]  # each prompt's new tokens when run alone (section 6)
def only_in_row(r, step):  # new to row r at this step, and never emitted by another row
    return runs[r][step] not in runs[r][:step] and all(runs[r][step] not in runs[o] for o in range(len(runs)) if o != r)
found = next(((step, r) for step in [*range(1, N_EOS - 1), 0] for r in range(len(runs)) if only_in_row(r, step)), None)
assert found is not None, "no row emits a token the other rows never emit: try other prompts"
eos_step, eos_row = found
EOS = runs[eos_row][eos_step]
print(f"EOS := token {EOS} ({tokenizer.decode([EOS])!r}), emitted by row {eos_row} as new token #{eos_step + 1}")

# %%
stopped = kvlib.generate(model, batch_ids, N_EOS, attention_mask=batch_mask, eos_token_id=EOS, pad_token_id=PAD)
new = stopped[:, batch_ids.shape[1]:].tolist()
for i, row_tokens in enumerate(new):
    print(f"row {i}:", row_tokens)

# %% [markdown]
Check: the row that hit EOS equals its solo run up to and including EOS, then padding; the others ran all steps;
every row equals its solo run cut at EOS; and transformers' `generate` agrees token for token.

# %%
assert new[eos_row][: eos_step + 1] == runs[eos_row][: eos_step + 1] and new[eos_row][eos_step + 1:] == [PAD] * (N_EOS - eos_step - 1)
assert all(new[i] == runs[i] for i in range(len(runs)) if i != eos_row)
solo_eos = [s[: len(e) + r.index(EOS) + 1] if EOS in r else s for s, e, r in zip(solo, encoded, runs)]
assert unpad_rows(stopped, batch_mask, eos_token_id=EOS) == solo_eos
assert torch.equal(stopped, hf.generate(batch_ids, attention_mask=batch_mask, max_new_tokens=N_EOS, do_sample=False,
                                        eos_token_id=EOS, pad_token_id=PAD))

# %% [markdown]
## 8. Masks that are refused

A wrong mask would silently produce wrong tokens, so `kvlib.generate` checks it first: the shape of `input_ids`,
only 0 and 1, at least one token per row, and **left** padding (right padding would put new tokens after the
padding, at positions the row never reaches alone).

# %%
two = torch.tensor([[11, 12, 13], [PAD, 14, 15]])  # (2, 3): row 1 has one padding slot
bad_masks = {
    "wrong shape": torch.ones(2, 4, dtype=torch.long),
    "right padding": torch.tensor([[1, 1, 1], [1, 1, 0]]),
    "all-padding row": torch.tensor([[1, 1, 1], [0, 0, 0]]),
    "values other than 0/1": torch.tensor([[1, 1, 1], [0, 2, 2]]),
    "not a tensor": [[1, 1, 1], [0, 1, 1]],
}
for name, mask in bad_masks.items():
    try:
        kvlib.generate(model, two, 2, attention_mask=mask)
        raise AssertionError(f"{name}: accepted")
    except (ValueError, TypeError) as e:
        print(f"{name:22s} -> {type(e).__name__}: {e}")

# %% [markdown]
## 9. What padding costs

The mask hides padding from attention, but the padded slots are still computed and **stored** in the cache like
real tokens: every padding slot holds a key and a value in every layer. Per token that is
`2 · n_layer · n_embd · bytes per value` (`kvlib.memory.bytes_per_token_for_config`), so

**padding bytes = padding slots × KV bytes per token.** Bytes are priced on GPT-2 small's shapes (the random
model of section 5), as in notebook 04.

# %%
waste = padding_waste(batch_mask, small.config, torch.float32)
print(f"KV bytes per token (fp32): 2 x {small.config.n_layer} x {small.config.n_embd} x 4 = {waste['kv_bytes_per_token']:,}")
print(f"padding slots: {waste['padding_slots']} of {waste['total_slots']} "
      f"({100 * waste['padding_fraction']:.1f}%), {waste['padding_bytes']:,} B of {waste['total_bytes']:,} B")
assert waste["kv_bytes_per_token"] == 2 * small.config.n_layer * small.config.n_embd * 4

# The formula against a real cache: after the prefill the cache holds B x T_prompt slots, padding included.
cache = kvlib.DynamicKVCache()
with torch.inference_mode():
    kvlib.prefill(small, batch_ids, cache, batch_mask)
print("cache.nbytes == total_bytes:", cache.nbytes == waste["total_bytes"])
assert cache.nbytes == waste["total_bytes"]

# %% [markdown]
A short batch wastes little in absolute terms. Put one long prompt in a batch of short ones and the short rows
pay for its length:

# %%
lengths = [1000, 200, 50, 10]
_, long_mask = left_pad([[0] * n for n in lengths], pad_token_id=0)
long_waste = padding_waste(long_mask, small.config, torch.float32, max_new_tokens=1024 - max(lengths))
print("prompt lengths:", lengths, "| padded to", long_mask.shape[1])
print(f"padding slots: {long_waste['padding_slots']:,} of {long_waste['total_slots']:,} "
      f"({100 * long_waste['padding_fraction']:.1f}% of the cache)")
print("padding bytes:", format_bytes(long_waste["padding_bytes"]))
print("whole cache:  ", format_bytes(long_waste["total_bytes"]))
assert long_waste["padding_slots"] == sum(max(lengths) - n for n in lengths)

# %% [markdown]
Finished rows waste slots too: after EOS a row keeps receiving padding tokens, and each of them is fed through the
model and cached like any other token until the whole batch stops. The grid below shows the batch of section 7,
slot by slot (the last column is generated but never fed back, so it is not in the cache).

# %%
kinds = slot_kinds(stopped, batch_mask, eos_token_id=EOS)  # (B, T_total)
after_eos_cached = int((kinds[:, :-1] == AFTER_EOS_SLOT).sum())
print(f"slots after EOS held in the cache: {after_eos_cached} "
      f"= {after_eos_cached * waste['kv_bytes_per_token']:,} B")
assert after_eos_cached == N_EOS - eos_step - 2
fig = plot_batch_slots(kinds.numpy(), SLOT_LABELS,
                       title=f"A left-padded batch after generation (EOS = token {EOS} in row {eos_row})")
save_figure(fig, "06_batch_slots")  # writes figures/06_batch_slots.png only when KVLIB_WRITE_FIGURES=1

# %% [markdown]
Serving systems fight exactly this waste: vLLM's PagedAttention allocates the cache in blocks per sequence instead
of one padded rectangle, and continuous batching lets a finished row's place go to a new request.

## What to remember

- In transformers 5, `past_key_values` is a `Cache` object: `DynamicCache` (grows by `torch.cat`) or
  `StaticCache` (preallocated; compare its filled prefix; `get_seq_length()` is a tensor). Its
  `layers[i].keys/.values` are the same `(B, nh, T, hs)` tensors kvlib computes, to fp32 rounding.
- A cache is just tensors: `kvlib.hf` converts both ways, and a generation continues across libraries unchanged.
- The tuple-of-tuples `past_key_values` and `from_legacy_cache` are gone; wrap old tuples with `DynamicCache(...)`.
- Batched prompts: left padding + `attention_mask` + per-row positions (`cumsum - 1`) make every row equal its
  solo run; transformers' `generate` does the same, its bare forward needs `position_ids` from you.
- Padding is hidden, not free: padding slots × `2 · n_layer · n_embd · bytes` of cache, plus the slots of rows
  that finished early.

# %% [markdown]
## Exercises

**Exercise 1.** Continue a generation across libraries the other way round from section 3: let transformers'
`StaticCache` hold the prompt, convert it with `from_dynamic_cache(..., kind="dynamic")`, and let kvlib decode
`N_NEW - 1` tokens. The result must equal `reference`.

# %% hidden
# Solution
sc = StaticCache(config=hf.config, max_cache_len=T_prompt + N_NEW)
with torch.inference_mode():
    first_hf = hf(ids, past_key_values=sc, use_cache=True).logits[:, -1].argmax(-1)  # (1,)
kv = from_dynamic_cache(sc, kind="dynamic")  # takes the StaticCache's filled prefix
seq_ex = torch.cat([ids, first_hf[:, None]], dim=1)
with torch.inference_mode():
    while seq_ex.shape[1] < reference.shape[1]:
        seq_ex = torch.cat([seq_ex, kvlib.decode_one_token(model, seq_ex[:, -1], kv).argmax(-1)[:, None]], dim=1)
assert torch.equal(seq_ex, reference)
print("transformers StaticCache -> kvlib continues == kvlib alone:", torch.equal(seq_ex, reference))

# %% [markdown]
**Exercise 2.** A batch holds one prompt of 1,000 tokens and seven of 10 tokens, generating 24 tokens each, on
GPT-2 small's shapes in fp16. How many bytes of the cache are padding? Use `padding_waste` with a `GPT2Config`.

# %% hidden
# Solution
_, mask_ex = left_pad([[0] * 1000] + [[0] * 10] * 7, pad_token_id=0)
waste_ex = padding_waste(mask_ex, kvlib.GPT2Config.from_name("gpt2"), torch.float16, max_new_tokens=24)
print(f"padding: {waste_ex['padding_slots']:,} slots = {format_bytes(waste_ex['padding_bytes'])}")
assert waste_ex["padding_slots"] == 7 * 990 and waste_ex["padding_bytes"] == 7 * 990 * 2 * 12 * 768 * 2

# %% [markdown]
[← 05 · Timing](05_timing.ipynb) · [cheat sheet](CHEATSHEET.md)
