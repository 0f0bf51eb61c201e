# %% [markdown]
# 04 · How much memory does the KV cache take?

[← 03 · O(n²) vs O(n)](03_complexity_n2_vs_n.ipynb) · [05 · Timing →](05_timing.ipynb) · [cheat sheet](CHEATSHEET.md)

A KV cache trades memory for time: every generated token reads the keys and values of all earlier tokens instead
of recomputing them, so those keys and values must sit in memory for the whole request. This notebook prices
that memory exactly.

What you will learn:
- the formula **2 · batch · layers · KV heads · head_dim · tokens · bytes per element**, factor by factor;
- the classic "32 G" example (batch 32, 32 layers, hidden 4096, 2,048 tokens, fp16) redone with its units right,
  GPT-2 small's bytes per token, and the vLLM paper's 800 KB per token for OPT-13B;
- that the formula is not an estimate: kvlib's caches hold exactly that many bytes, checked against the tensors'
  storages and against PyTorch's allocator, and how much a preallocated cache reserves but does not use;
- at what batch × length the cache outgrows the model's weights, and how many tokens fit in a 24 GiB or
  80 GiB GPU after the weights;
- how grouped-query and multi-query attention, 8-bit storage and a sliding window shrink the bill;
- a live calculator (`kvlib.widgets.memory_calculator`) to price any model yourself.

Shape letters: B batch, nh heads (n_kv_head of them store K/V), hs = head_dim, T tokens cached, C = n_embd,
L layers. Runs in under two minutes on a quiet 2-core CPU.

# %% tags=["nbval-ignore-output"]
from importlib.metadata import version

import torch
import transformers

import kvlib
from kvlib import memory, plotting, widgets
from kvlib.memory import GB, GiB, KiB, TB, TiB, kB

print("torch", torch.__version__, "| transformers", transformers.__version__, "| kvlib", version("kvlib"))

# %% [markdown]
## 1. The formula, factor by factor

Take one token of one sequence. In every layer, attention computes a key vector and a value vector **per K/V
head**, each `head_dim` numbers wide, and the cache keeps both. So one token costs

- **2** (a key and a value)
- × **head_dim** numbers per head
- × **n_kv_head** heads per layer (GPT-2 gives every query head its own K/V head, so n_kv_head = n_head and
  n_kv_head · head_dim is the hidden size n_embd)
- × **n_layer** layers
- × **bytes per element** (4 in fp32, 2 in fp16/bf16, 1 in int8/fp8)

and the cache holds that for **seq_len** tokens of each of **batch_size** sequences. Nothing else enters: not
the vocabulary, not the MLP width, not the number of *query* heads. Here is the running product for GPT-2 small
(fp32, the dtype kvlib runs in on CPU) at its full context of 1,024 tokens:

# %%
config = kvlib.GPT2Config.from_name("gpt2")
factors = [  # (factor, value, what the running product counts)
    ("K and V", 2, "vectors per head, per layer, per token"),
    ("head_dim", config.head_dim, "numbers per head, per layer, per token"),
    ("n_kv_head", config.n_kv_head, "numbers per layer, per token"),
    ("n_layer", config.n_layer, "numbers per token"),
    ("bytes per element (fp32)", memory.dtype_bytes(torch.float32), "B per token"),
    ("seq_len", 1024, "B per sequence"),
    ("batch_size", 1, "B in all"),
]
running = 1
for name, value, unit in factors:
    running *= value
    print(f"× {value:>5,}  {name:<26} = {running:>12,} {unit}")

# %%
assert config.n_kv_head * config.head_dim == config.n_embd == 768
assert running == memory.kv_cache_bytes_for_config(config, seq_len=1024, batch_size=1, dtype=torch.float32)

# %% [markdown]
## 2. The classic example, and a unit slip

A popular post on the KV cache prices batch 32 of a 7B-class model (32 layers, hidden 4096 = 32 heads of 128)
at 2,048 tokens in fp16 as 2 · 32 · 32 · 4096 · 2048 · 2 bytes, divides by 1024 **four** times, and calls the
result "32G". Dividing by 1024 four times gives tebibytes; "32" is what three divisions give, in gibibytes; and in
the decimal gigabytes of a spec sheet the same bytes are more than 32:

# %%
classic = memory.kv_cache_bytes(n_layer=32, n_kv_head=32, head_dim=4096 // 32, seq_len=2048, batch_size=32,
                                dtype="fp16")
print(f"{classic:,} B")
for how, divisor, unit in [("÷ 1024⁴", TiB, "TiB"), ("÷ 1024³", GiB, "GiB"), ("÷ 10⁹", GB, "GB"), ("÷ 10¹²", TB, "TB")]:
    print(f"{how:>8} = {classic / divisor:.5g} {unit}")
print(f"1 GiB = {GiB / GB:.4f} GB: binary units are {GiB / GB - 1:.1%} larger at this scale")

# %%
assert classic == 2 * 32 * 32 * 4096 * 2048 * 2 == 34_359_738_368
assert classic / 1024**4 == 0.03125  # the post's quotient: 0.03125 TiB ...
assert classic / 1024**3 == 32       # ... which is 32 GiB ...
assert round(classic / GB, 2) == 34.36  # ... and 34.36 GB: "32G" is right only as GiB
assert round(GiB / GB - 1, 3) == 0.074

# %% [markdown]
GPU memory comes in binary units (an "80 GB" card has about 80 GiB; `torch.cuda.mem_get_info()` tells you exactly),
while disks and many papers count in decimal ones, so the 7.4 % between them matters when you ask whether
something fits. `kvlib.memory` keeps both: `GiB = 2**30`, `GB = 10**9`.

## 3. Bytes per token: GPT-2 small and the vLLM paper's OPT-13B

Per token (batch 1), the formula drops seq_len and batch. GPT-2 small stores 2 × 12 layers × 768 numbers per
token. The vLLM paper (PagedAttention, SOSP'23) quotes **800 KB per token** for OPT-13B: 2 × 5120 hidden × 40
layers × 2 bytes (fp16). That "KB" is the binary kind:

# %%
gpt2_fp32 = memory.bytes_per_token_for_config(config, torch.float32)
opt_fp16 = memory.bytes_per_token_for_config("opt-13b", torch.float16)
print(f"GPT-2 small, fp32: {gpt2_fp32:,} B per token; 1,024 tokens: {1024 * gpt2_fp32:,} B = {1024 * gpt2_fp32 / 2**20:.1f} MiB")
print(f"OPT-13B, fp16:     {opt_fp16:,} B per token = {opt_fp16 / KiB:g} KiB = {opt_fp16 / kB:g} kB")

# %%
assert gpt2_fp32 == 2 * 12 * 768 * 4 == 73_728 and 1024 * gpt2_fp32 == 75_497_472
assert opt_fp16 == 2 * 5120 * 40 * 2 == 819_200 == 800 * KiB and opt_fp16 / kB == 819.2

# %% [markdown]
The same for every preset in `kvlib.memory.PRESETS`, in fp16, with each model's context length (the longest
sequence it was trained for: `n_positions` or `max_position_embeddings` in its config), which later sections use
instead of one length for all:

# %%
CONTEXT = {"gpt2": 1024, "gpt2-medium": 1024, "gpt2-large": 1024, "gpt2-xl": 1024,
           "llama-2-7b": 4096, "llama-3-8b": 8192, "opt-13b": 2048}
print(f"{'preset':<12}{'layers':>7}{'KV heads':>9}{'head_dim':>9}{'fp16 B/token':>14}{'KiB/token':>10}{'context':>9}")
for name, p in memory.PRESETS.items():
    per_token = memory.bytes_per_token_for_config(p, "fp16")
    print(f"{name:<12}{p.n_layer:>7}{p.n_kv_head:>9}{p.head_dim:>9}{per_token:>14,}{per_token / KiB:>10g}{CONTEXT[name]:>9,}")

# %%
assert set(CONTEXT) == set(memory.PRESETS) and CONTEXT["gpt2"] == config.n_positions

# %% [markdown]
## 4. Measured against predicted

A formula is only worth teaching if real caches obey it. We fill kvlib's two caches with a model of **GPT-2
small's shapes and random weights** (`kvlib.random_gpt2`: cache sizes depend on shapes and dtype only, never on
the weights) and compare three independent counts:

1. `cache.nbytes`: kvlib's own bookkeeping (numel × element size of the cached keys and values);
2. the bytes of the distinct **storages** behind the cached tensors, i.e. what keeping them alive costs (a view
   keeps its whole storage alive, so this can exceed numel × element size);
3. what **PyTorch's allocator** handed out while the cache was built: `torch.profiler` with `profile_memory=True`
   on CPU, `torch.cuda.memory_allocated` before and after on a GPU (`kvlib.memory.allocated_bytes`).

# %%
model = kvlib.random_gpt2(config)
dtype = model.lm_head.weight.dtype
input_ids = torch.tensor([[43, 295, 417, 36128, 318, 257]])  # (1, 6): any six token ids
print("dtype:", dtype, "| prompt length:", input_ids.shape[1])

# %% [markdown]
**The dynamic cache** grows by concatenation. Prefill the 6-token prompt, then decode 10 tokens greedily, and
compare after each phase:

# %%
def counts(cache):  # kvlib's bookkeeping, the formula for the tokens held, the storages kept alive
    return cache.nbytes, memory.kv_cache_bytes_for_config(config, cache.get_seq_length(), dtype=dtype), memory.cache_storage_bytes(cache)


cache = kvlib.DynamicKVCache()
with torch.inference_mode():
    token = kvlib.prefill(model, input_ids, cache).argmax(-1)
    after_prefill = counts(cache)
    for _ in range(10):
        token = kvlib.decode_one_token(model, token, cache).argmax(-1)
after_decode = counts(cache)
for when, (n, f, s) in (("after prefill", after_prefill), ("after decode ", after_decode)):
    print(f"{when}: nbytes {n:>9,} | formula {f:>9,} | storages {s:>9,}")

# %%
assert len(set(after_prefill)) == 1 and len(set(after_decode)) == 1  # all three counts agree, to the byte
assert cache.get_seq_length() == 16 and cache.nbytes == 16 * 73_728

# %% [markdown]
Why count storages at all? Because views hide bytes. Inside attention, q, k and v are slices of **one** fused
`c_attn` output; a cache that kept k and v as they come would keep q's third of that buffer alive too, 1.5× the
bytes of K and V. kvlib's `DynamicKVCache` copies the prompt's K/V on the first update (as transformers'
`DynamicCache` does by concatenating onto an empty tensor), which is why the storages above equal `nbytes`. The
trap itself, measured on the first layer:

# %%
with torch.inference_mode():
    x = model.transformer.wte(input_ids)  # (1, 6, 768): any input will do, only shapes matter here
    qkv = model.transformer.h[0].attn.c_attn(x).view(1, 6, 3, config.n_head, config.head_dim)  # (B, T, 3, nh, hs)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, nh, T, hs), all views of qkv's storage
kv_numel_bytes, kv_storage_bytes = k.nbytes + v.nbytes, memory.storage_bytes([k, v])
print(f"k and v: {kv_numel_bytes:,} B of elements, {kv_storage_bytes:,} B of storage kept alive "
      f"({kv_storage_bytes / kv_numel_bytes:g}×)")

# %%
assert kv_storage_bytes * 2 == kv_numel_bytes * 3

# %% [markdown]
**The static cache** preallocates `(batch, n_kv_head, max_seq_len, head_dim)` buffers for every layer and writes
each token in place. Its memory is set by `max_seq_len`, not by the tokens actually generated: *reserved*
(`nbytes_allocated`) versus *used* (`nbytes`):

# %%
static = kvlib.StaticKVCache(config, batch_size=1, max_seq_len=config.n_positions, dtype=dtype)
with torch.inference_mode():
    token = kvlib.prefill(model, input_ids, static).argmax(-1)
    for _ in range(10):
        token = kvlib.decode_one_token(model, token, static).argmax(-1)
used, reserved = static.nbytes, static.nbytes_allocated
print(f"used     {used:>11,} B = formula for {static.get_seq_length()} tokens")
print(f"reserved {reserved:>11,} B = formula for max_seq_len = {static.max_seq_len} tokens")
print(f"share of the reservation holding real tokens: {used / reserved:.2%}")

# %%
assert used == memory.kv_cache_bytes_for_config(config, 16, dtype=dtype)
assert reserved == memory.kv_cache_bytes_for_config(config, 1024, dtype=dtype) == memory.cache_storage_bytes(static)
assert reserved == 75_497_472 and used / reserved == 16 / 1024

# %% [markdown]
Reserving for the worst case is what the vLLM paper measured in serving systems of its day: most KV memory held
no token (its paged cache allocates blocks on demand instead). Here the reservation is 64× what 16 tokens need.

**The allocator's own count.** Neither of the checks above asked the memory allocator. `allocated_bytes` runs a
function and reports the net bytes PyTorch's allocator handed out meanwhile. On this machine that is the CPU
profiler; on a CUDA GPU the same call reads `torch.cuda.memory_allocated` (which rounds each block up to a multiple
of 512 B; every buffer here is a multiple of that already).

# %%
device = "cuda" if torch.cuda.is_available() else "cpu"
fresh, allocated = memory.allocated_bytes(
    lambda: kvlib.StaticKVCache(config, batch_size=2, max_seq_len=512, dtype=torch.float32, device=device), device)
predicted = memory.kv_cache_bytes_for_config(config, seq_len=512, batch_size=2, dtype=torch.float32)
print(f"a fresh static cache: allocator {allocated:,} B | formula {predicted:,} B | equal: {allocated == predicted}")

# %%
assert allocated == predicted == fresh.nbytes_allocated

# %% [markdown]
And a prefill: everything it allocated and did not free (activations come and go) must be the cache plus the
logits it returns.

# %%
cache = kvlib.DynamicKVCache()
model, input_ids = model.to(device), input_ids.to(device)
block = 512 if device == "cuda" else 1  # the CUDA caching allocator hands out multiples of 512 B
with torch.inference_mode():
    kvlib.prefill(model, input_ids, kvlib.DynamicKVCache())  # warm-up: lazily built workspaces are not the cache's
    logits, allocated = memory.allocated_bytes(lambda: kvlib.prefill(model, input_ids, cache), device)
survivors = memory.cache_storage_bytes(cache) + -(-logits.untyped_storage().nbytes() // block) * block
print(f"prefill: allocator net {allocated:,} B = cache {memory.cache_storage_bytes(cache):,} B + logits "
      f"{logits.untyped_storage().nbytes():,} B: {allocated == survivors}")

# %%
assert allocated == survivors and memory.cache_storage_bytes(cache) == memory.kv_cache_bytes_for_config(config, 6, dtype=dtype)
del fresh, static, logits

# %% [markdown]
No hidden bytes.

## 5. When does the cache outgrow the model?

The weights are paid once; the cache is paid per token, summed over the batch. So for every model there is a
number of cached tokens (batch × seq_len) beyond which the cache is the bigger bill. Both in fp16; the last
column says how many full contexts of that model that is (a batch of that many sequences at its longest):

# %%
crossover = {name: memory.cache_outgrows_weights_at(name, "fp16") for name in memory.PRESETS}
print(f"{'preset':<12}{'params':>15}{'weights GiB':>12}{'B/token':>10}{'cache > weights from':>22}{'full contexts':>15}")
for name, n in crossover.items():
    print(f"{name:<12}{memory.PRESETS[name].n_params:>15,}{memory.weight_bytes(name, 'fp16') / GiB:>12.2f}"
          f"{memory.bytes_per_token_for_config(name, 'fp16'):>10,}{n:>16,} tokens{n / CONTEXT[name]:>15.1f}")
print(f"\nclassic example: cache / weights = {classic / memory.weight_bytes('llama-2-7b'):.2f}; "
      f"llama-3-8b / llama-2-7b crossover: {crossover['llama-3-8b'] / crossover['llama-2-7b']:.2f}")

# %%
for name, n in crossover.items():  # the first token count at which the cache costs more than the weights
    assert n * memory.bytes_per_token_for_config(name, "fp16") > memory.weight_bytes(name, "fp16") >= (n - 1) * memory.bytes_per_token_for_config(name, "fp16")
assert 6 * 1024 < crossover["gpt2"] <= 7 * 1024  # GPT-2 small: a batch of 7 full 1,024-token contexts
assert 2.5 < classic / memory.weight_bytes("llama-2-7b") < 2.6  # the classic batch holds 2.5x more cache than weights
assert 4.7 < crossover["llama-3-8b"] / crossover["llama-2-7b"] < 4.8  # GQA: ~4.8x as many tokens before the cache catches up

# %%
tokens = [2**i for i in range(8, 21)]  # 256 ... 1,048,576 cached tokens
shown = ["gpt2", "gpt2-xl", "llama-2-7b", "llama-3-8b", "opt-13b"]
fig = plotting.plot_cache_vs_weights(
    tokens, {name: [memory.kv_cache_bytes_for_config(name, t, dtype="fp16") for t in tokens] for name in shown},
    {name: memory.weight_bytes(name, "fp16") for name in shown},
    title="KV cache vs weights (fp16): the dot is where the cache outgrows the model")
plotting.save_figure(fig, "04_kv_cache_vs_weights")  # written to figures/ only with KVLIB_WRITE_FIGURES=1

# %% [markdown]
## 6. How many tokens fit on a GPU?

Subtract the weights from the card's memory and divide by the bytes per token. These are upper bounds: the CUDA
context, activations and allocator slack also need room. Weights and cache in fp16; "contexts" is the number of
full-length sequences of that model:

# %%
budgets = {"24 GiB": 24 * GiB, "80 GiB": 80 * GiB}
fits = {(name, b): memory.max_cached_tokens(budget, name, "fp16") for name in memory.PRESETS for b, budget in budgets.items()}
print(f"{'preset':<12}" + "".join(f"{b + ': tokens':>18}{'contexts':>10}" for b in budgets))
for name in memory.PRESETS:
    print(f"{name:<12}" + "".join(f"{fits[name, b]:>18,}{fits[name, b] / CONTEXT[name]:>10.1f}" for b in budgets))
ratio = fits["llama-3-8b", "80 GiB"] / fits["llama-2-7b", "80 GiB"]
print(f"\nOPT-13B weights: {memory.weight_bytes('opt-13b') / GiB:.2f} GiB; llama-3-8b / llama-2-7b tokens in 80 GiB: {ratio:.2f}")

# %%
assert fits["opt-13b", "24 GiB"] < 100  # its fp16 weights alone take 23.94 GiB: no room for a real request
assert round(memory.weight_bytes("opt-13b") / GiB, 2) == 23.94
assert 3.8 < ratio < 4  # GQA's 4x fewer K/V heads, less the room Llama-3-8B's larger weights take

# %% [markdown]
One sequence's cache against its length, each model's context limit marked (a model cannot run past it; the
dotted continuation is the formula only):

# %%
seq_lens = [2**i for i in range(7, 18)]  # 128 ... 131,072 tokens, batch 1
fig = plotting.plot_kv_bytes_vs_seq_len(
    seq_lens, {name: [memory.kv_cache_bytes_for_config(name, t, dtype="fp16") for t in seq_lens] for name in shown},
    budgets={f"a whole {label} GPU, no weights": budget for label, budget in budgets.items()},
    context_limits={name: CONTEXT[name] for name in shown}, title="KV cache of one sequence (fp16, batch 1)")
plotting.save_figure(fig, "04_kv_bytes_vs_seq_len")

# %% [markdown]
## 7. What shrinks the bill

Three levers act on the factors of the formula:

- **fewer K/V heads**: grouped-query attention (GQA) lets several query heads share one K/V head; multi-query
  attention (MQA) keeps a single K/V head. Query heads cost nothing in the cache.
- **fewer bytes per element**: fp16/bf16 halve fp32; int8 or fp8 halve fp16 again.
- **fewer cached tokens**: a sliding window (as in Mistral-7B) keeps only the last W tokens per layer.

Each with the computed number, on Llama-3-8B's shapes (32 layers, head_dim 128):

# %%
shapes = dict(n_layer=32, head_dim=128)
mha, gqa, mqa = (memory.kv_cache_bytes(**shapes, n_kv_head=h, seq_len=8192, dtype="fp16") for h in (32, 8, 1))
print(f"8,192 tokens, fp16: MHA (32 KV heads) {mha / GiB:g} GiB | GQA (8) {gqa / GiB:g} GiB | MQA (1) {mqa / GiB:g} GiB")
# The same comparison as LLMs-from-scratch's GQA chapter (32k context, bf16), in its decimal GB:
mha_32k, gqa_32k = (memory.kv_cache_bytes(**shapes, n_kv_head=h, seq_len=32768, dtype="bf16") for h in (32, 8))
print(f"32,768 tokens, bf16: MHA {mha_32k / GB:.2f} GB, GQA {gqa_32k / GB:.2f} GB")

# %%
assert mha == 4 * gqa == 32 * mqa
assert (round(mha_32k / GB, 2), round(gqa_32k / GB, 2)) == (17.18, 4.29)

# %% [markdown]
Bytes per element, on the classic example (batch 32, 2,048 tokens, 32 layers × 32 heads × 128). Quantized caches
also store a scale and a zero point per group of values; fp16 ones per group of 64 add 2·2/64 bytes per value:

# %%
by_dtype = {d: memory.kv_cache_bytes(n_layer=32, n_kv_head=32, head_dim=128, seq_len=2048, batch_size=32, dtype=d)
            for d in ("fp32", "fp16", "bf16", "fp8", "int8")}
for d, n in by_dtype.items():
    print(f"  {d:<5} {n / GiB:>4g} GiB")
overhead = 2 * 2 / 64  # bytes per value
print(f"int8 with an fp16 scale + zero point per 64 values: {1 + overhead} B per value "
      f"→ {by_dtype['int8'] * (1 + overhead) / GiB:g} GiB")

# %%
assert by_dtype["fp32"] == 2 * by_dtype["fp16"] == 2 * by_dtype["bf16"] == 4 * by_dtype["int8"] == 4 * by_dtype["fp8"]
assert by_dtype["int8"] * (1 + overhead) / GiB == 17

# %% [markdown]
A sliding window, on Mistral-7B's window of 4,096 tokens (its K/V shapes are Llama-3-8B's: 32 layers, 8 KV heads
of 128):

# %%
window = 4096
windowed = {n: (memory.kv_cache_bytes_for_config("llama-3-8b", n), memory.kv_cache_bytes_for_config("llama-3-8b", n, sliding_window=window))
            for n in (2048, 4096, 32768)}
for n, (full, w) in windowed.items():
    print(f"{n:>6,} tokens: full {full / GiB:g} GiB, window {window:,}: {w / GiB:g} GiB")

# %%
assert windowed[32768][0] == 8 * windowed[32768][1]  # 8x the window: 8x the bytes saved
assert windowed[2048][0] == windowed[2048][1]  # shorter than the window: nothing saved

# %% [markdown]
The window caps memory at W tokens whatever the length, at the price of attention never seeing further back
than W tokens within a layer.

## 8. A calculator

Pick a preset or set the shapes yourself; the total (GiB and GB), the exact bytes, the comparison with the
weights and the plot update as you move a control. Moving a shape slider switches the preset to "custom" (its
parameter count no longer applies). It opens on the classic example.

# %% tags=["nbval-ignore-output"]
calculator = widgets.memory_calculator("llama-2-7b", seq_len=2048, batch_size=32, dtype="fp16")
calculator

# %% [markdown]
Without a live kernel (on GitHub, say) the widget above cannot respond; this is the result it opens with:

# %%
print(widgets.memory_summary_text(calculator.estimate))
assert calculator.estimate["total_bytes"] == classic

# %% [markdown]
## Exercises

**Exercise 1 (price a 70B model's cache).** Llama-2-70B has 80 layers, 64 query heads of 128 and 8 K/V heads
(GQA), and a context of 4,096 tokens. How many GiB does its fp16 cache take for a batch of 8 full contexts? How
much would it take without GQA (64 K/V heads)?

# %% hidden
# Solution
gqa_70b = memory.kv_cache_bytes(n_layer=80, n_kv_head=8, head_dim=128, seq_len=4096, batch_size=8, dtype="fp16")
mha_70b = memory.kv_cache_bytes(n_layer=80, n_kv_head=64, head_dim=128, seq_len=4096, batch_size=8, dtype="fp16")
print(f"Llama-2-70B, batch 8 x 4,096 tokens, fp16: {gqa_70b / GiB:g} GiB with GQA, {mha_70b / GiB:g} GiB without")
assert gqa_70b == 2 * 8 * 80 * 8 * 128 * 4096 * 2 and gqa_70b / GiB == 10 and mha_70b == 8 * gqa_70b

# %% [markdown]
**Exercise 2.** GPT-2 small's random-weight model runs in fp32 on this CPU. How many full 1,024-token contexts
fit in 1 GiB of cache? Answer with the formula by hand, then check with `memory.kv_cache_bytes_for_config`.

# %% hidden
# Solution
per_context = memory.kv_cache_bytes_for_config(config, seq_len=1024, dtype=torch.float32)  # 72 MiB
print(f"one 1,024-token context: {per_context / 2**20:g} MiB; contexts in 1 GiB: {GiB // per_context}")
assert per_context == 2 * 12 * 12 * 64 * 1024 * 4 and GiB // per_context == 14

# %% [markdown]
## Takeaways

- KV bytes = 2 · batch · layers · KV heads · head_dim · tokens · bytes per element, exactly: kvlib's caches,
  their storages and PyTorch's allocator all agree with it to the byte.
- Mind the units: 34,359,738,368 B is 32 GiB, 34.36 GB, and 0.03125 TiB.
- The cache grows with batch × length; past a model-specific number of tokens it costs more than the weights, and
  on a GPU it, not the weights, decides how many requests fit.
- A preallocated cache pays for `max_seq_len` up front, whatever is generated.
- GQA/MQA, lower-precision storage and sliding windows each cut one factor of the formula.

[← 03 · O(n²) vs O(n)](03_complexity_n2_vs_n.ipynb) · [05 · Timing →](05_timing.ipynb): what the cache buys in time.
