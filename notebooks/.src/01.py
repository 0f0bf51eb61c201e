# %% [markdown]
# 01 · Generation without a cache

[02 · Attention with a KV cache →](02_attention_with_a_kv_cache.ipynb) · [cheat sheet](CHEATSHEET.md)

A language model writes one token at a time. The plainest way to do it: run the model over the whole sequence,
take the most likely next token, append it, and run the model over the whole (one token longer) sequence again.

In this notebook you will:
1. write that greedy loop yourself, a few lines around `model(...)`, and watch the text grow;
2. look inside it: capture the keys and values (K/V) every layer computes at every step, and check that each step
   recomputes K/V that the previous step had already computed;
3. count the token positions the loop processes, step by step and in total: 1 + 2 + … + n grows like n²/2, while
   a loop that keeps K/V (notebook 02) processes each position once.

Shape letters used throughout the series: **B** batch, **nh** heads, **hs** head size, **T_new** tokens fed to a
forward, **T_total** keys they attend to, **C** channels, **L** layers, **V** vocabulary (the
[cheat sheet](CHEATSHEET.md) has them all). Runs in under two minutes on a quiet 2-core CPU.

# %% tags=["nbval-ignore-output"]
from importlib.metadata import version

import torch
import transformers

import kvlib
from kvlib import plotting, shakespeare
from kvlib.trace import compare_prefix, count_positions, record_kv

print(f"torch {torch.__version__}, transformers {transformers.__version__}, kvlib {version('kvlib')}")

# %% [markdown]
## 1. The model and the prompt

The series uses **a small GPT-2 trained on Shakespeare's plays and poems** that ships with kvlib, so that its text
is text without any download: `kvlib.load_gpt2("shakespeare")` returns it with the real GPT-2 tokenizer. It is
GPT-2's architecture at a smaller size (4 layers, 8 heads of 16, 128 channels, 512 positions). With real GPT-2
weights on your machine (a Hugging Face cache or the network), `kvlib.load_gpt2("gpt2")` runs every cell of
notebooks 01, 02 and 06 unchanged, with GPT-2 small's text. Where the series counts FLOPs, bytes or time
(notebooks 03–05) it uses GPT-2 small's shapes instead.

# %%
torch.set_grad_enabled(False)  # inference only: no autograd graph
model, tokenizer = kvlib.load_gpt2("shakespeare")
config = model.config
print(f"L = n_layer = {config.n_layer}, nh = n_head = {config.n_head}, hs = head_dim = {config.head_dim}, "
      f"C = n_embd = {config.n_embd}, V = {config.vocab_size:,}, n_positions = {config.n_positions}")

# %%
prompt = "Now is the winter of our discontent"
input_ids = torch.tensor([tokenizer.encode(prompt)])  # (1, T_prompt)
T_prompt = input_ids.shape[1]
print(input_ids.tolist(), [tokenizer.decode([t]) for t in input_ids[0].tolist()])

# %% [markdown]
## 2. The naive greedy loop

Each step feeds the **whole** sequence so far, prompt included, and keeps only the last position's logits:
the prediction for the token after it. Everything else the forward computed, the K/V of every earlier token
in every layer and the logits of every earlier position, is thrown away, to be computed again next step.

# %%
MAX_NEW_TOKENS = 16
sequence = input_ids
positions_fed = []  # token positions the model processed at each step
for step in range(MAX_NEW_TOKENS):
    logits = model(sequence)  # (1, T, V): every position, recomputed from scratch
    positions_fed.append(sequence.shape[1])
    next_id = logits[0, -1].argmax()  # greedy: the most likely token after the last position
    sequence = torch.cat([sequence, next_id.view(1, 1)], dim=1)  # (1, T + 1)
    print(f"step {step:2d}: fed {positions_fed[-1]:2d} tokens -> {tokenizer.decode([next_id.item()])!r}")
naive_tokens = sequence
n_steps = len(positions_fed)
print(repr(prompt), "->", repr(tokenizer.decode(naive_tokens[0, T_prompt:].tolist())))

# %% [markdown]
`kvlib.generate(..., use_cache=False)` is this same loop inside the library; it must give the same tokens
(notebook 02 relies on that when it compares the cached loop with this one):

# %%
with count_positions(model) as uncached_per_step:  # also count the positions each forward is fed (section 4)
    library_tokens = kvlib.generate(model, input_ids, n_steps, use_cache=False)
print("kvlib.generate(use_cache=False) == the loop above:", torch.equal(library_tokens, naive_tokens))

# %%
assert torch.equal(library_tokens, naive_tokens)

# %% [markdown]
### Five famous first lines

Is the model's text really made of Shakespeare's words? Greedy continuations of five famous first lines, 24 new
tokens each (line breaks shown as " / "), and the share of their words that occur anywhere in the corpus the
model was trained on (`kvlib.shakespeare.word_coverage`):

# %%
first_lines = ["To be, or not to be", "Now is the winter of our discontent", "Friends, Romans, countrymen",
               "Shall I compare thee to a summer's day?", "If music be the food of love"]
coverage = {}
for line in first_lines:
    ids = torch.tensor([tokenizer.encode(line)])  # (1, T_line)
    text = tokenizer.decode(kvlib.generate(model, ids, 24)[0, ids.shape[1]:].tolist())
    coverage[line] = shakespeare.word_coverage(text)
    print(f"{line!r} -> {text.replace(chr(10), ' / ')!r}  ({coverage[line]:.0%} corpus words)")

# %%
assert all(c >= 0.9 for c in coverage.values())  # at least 90% of the words of every continuation are Shakespeare's

# %% [markdown]
## 3. Looking inside: every step recomputes the K/V of every earlier token

In each layer, attention turns every position's hidden state into a query, a key and a value. The key and value
of token *i* depend on token *i*, its position, and (through the layers below) on tokens 0..*i*, never on a
later token: GPT-2's causal mask forbids it. So when one token is appended, the K/V of all earlier tokens
cannot change, yet the naive loop computes them all again.

To see this, record the K/V of every layer at every step. `kvlib.trace.record_kv` runs the same uncached
forward with a fresh, empty `DynamicKVCache` passed in: the computation is unchanged (nothing is cached yet),
but the cache keeps the K/V that the loop throws away.

# %%
kv_per_step = [record_kv(model, naive_tokens[:, :T]) for T in positions_fed]  # what each step computed
k0 = kv_per_step[0].key_cache[0]
print("layer-0 keys at step 0:", tuple(k0.shape), "= (B, nh, T, hs)")
print("positions held per step:", [kv.get_seq_length() for kv in kv_per_step])

# %%
assert [kv.get_seq_length() for kv in kv_per_step] == positions_fed and len(kv_per_step[0]) == config.n_layer

# %% [markdown]
Now compare step *t + 1* with step *t*: the first positions of step *t + 1*'s K/V, in all layers, against what
step *t* already had. Bit-for-bit equality is not guaranteed: a longer input can make the matrix-multiply kernel
block the sums differently, which changes the last bits of a float32 result. So the check uses a stated tolerance,
`torch.allclose` with `rtol = atol = 1e-5` (|new − old| ≤ 1e-5 + 1e-5·|old| for every element), and reports the
largest difference measured.

# %%
RTOL = ATOL = 1e-5
comparisons = [compare_prefix(before, after, rtol=RTOL, atol=ATOL) for before, after in zip(kv_per_step, kv_per_step[1:])]
recomputed_rows = sum(positions_fed[:-1])  # per layer: positions step t+1 computed again
print(f"{len(comparisons)} step pairs x {config.n_layer} layers x (K, V): all recomputed K/V equal the earlier ones "
      f"within rtol=atol={RTOL:g}: {all(c.allclose for c in comparisons)}")
print(f"K/V rows recomputed per layer over the run: {recomputed_rows}")

# %%
assert all(c.allclose for c in comparisons)

# %% [markdown]
How big are those rounding differences? They depend on the CPU's matmul kernels, so the numbers are shown but
not compared between machines; the check is that they sit at least four orders of magnitude below the values.

# %% tags=["nbval-ignore-output"]
worst = max(c.max_abs_diff for c in comparisons)
largest_value = max(t.abs().max().item() for kv in kv_per_step for t in kv.key_cache + kv.value_cache)
print(f"largest |difference| between a recomputed K/V element and the earlier one: {worst:.1e}")
print(f"largest |K/V element|: {largest_value:.1f}, so the difference is {worst / largest_value:.0e} of it")
print(f"step pairs bit-for-bit identical in every layer: {sum(c.identical for c in comparisons)} of {len(comparisons)}")

# %%
assert worst < 1e-4 * largest_value  # rounding: at least four orders of magnitude below the values

# %% [markdown]
Step *t + 1* spent compute to reproduce numbers that step *t* had already produced and discarded.

## 4. Counting the work

Step *s* feeds T_prompt + *s* positions, so generating n tokens after a prompt of length P processes

P + (P + 1) + … + (P + n − 1) = n·P + n(n − 1)/2

positions: the n(n + 1)/2 triangle of 1 + 2 + … + n, shifted by the prompt. A loop that keeps the K/V feeds
the prompt once and then one position per step: P + (n − 1). We measured the uncached loop above with
`kvlib.trace.count_positions`, a forward hook recording the `input_ids` length of every forward; now the cached one.

# %%
with count_positions(model) as cached_per_step:
    kvlib.generate(model, input_ids, n_steps, use_cache=True)
P, n = T_prompt, n_steps
print("uncached per step:", uncached_per_step, "total", sum(uncached_per_step))
print("cached per step:  ", cached_per_step, "total", sum(cached_per_step))
print(f"the uncached loop processed {sum(uncached_per_step) / sum(cached_per_step):.2f}x as many positions")

# %%
assert uncached_per_step == positions_fed == [P + s for s in range(n)] and cached_per_step == [P] + [1] * (n - 1)
assert sum(uncached_per_step) == n * P + n * (n - 1) // 2
assert sum(uncached_per_step) == (P + n - 1) * (P + n) // 2 - (P - 1) * P // 2  # the triangle minus its tip
assert sum(cached_per_step) == P + n - 1

# %% [markdown]
Every processed position costs the same per-token work in every layer (the Q/K/V and output projections, the MLP),
so these counts are, to first order, the work. The ratio grows with n. For longer generations, using the same
formulas:

# %%
ratios = []
for n_new in (16, 256, 1000):
    uncached = n_new * P + n_new * (n_new - 1) // 2
    cached = P + n_new - 1
    ratios.append(uncached / cached)
    print(f"{n_new:5d} new tokens: uncached {uncached:7,d} positions, cached {cached:5,d} ({uncached / cached:6.1f}x)")

# %%
assert ratios == sorted(ratios)  # the gap widens with n

# %%
fig = plotting.plot_positions_per_step(uncached_per_step, cached_per_step,
                                       title=f"Token positions fed per step, prompt of {P} tokens, {n} steps")
plotting.save_figure(fig, "01_positions_processed")  # written to figures/ only with KVLIB_WRITE_FIGURES=1

# %% [markdown]
## Exercises

**Exercise 1.** Without running the model, how many positions does the uncached loop process for a 20-token
prompt and 10 new tokens, and how many does the cached loop? Then check your numbers with `count_positions`.

# %% hidden
# Solution
P1, n1 = 20, 10
predicted = (n1 * P1 + n1 * (n1 - 1) // 2, P1 + n1 - 1)
ids20 = torch.arange(P1)[None]  # (1, 20): any 20 token ids
with count_positions(model) as u:
    kvlib.generate(model, ids20, n1, use_cache=False)
with count_positions(model) as c:
    kvlib.generate(model, ids20, n1, use_cache=True)
print(f"uncached {sum(u):,} and cached {sum(c):,} positions; predicted {predicted[0]:,} and {predicted[1]:,}")
assert (sum(u), sum(c)) == predicted == (245, 29)

# %% [markdown]
**Exercise 2.** For the prompt of this notebook, from how many new tokens on does the uncached loop process more
than 100× the positions of the cached one?

# %% hidden
# Solution
n_100 = next(m for m in range(1, 10_000) if (m * P + m * (m - 1) // 2) / (P + m - 1) > 100)
print(f"from {n_100} new tokens on (P = {P})")
assert (n_100 * P + n_100 * (n_100 - 1) // 2) > 100 * (P + n_100 - 1)
assert ((n_100 - 1) * P + (n_100 - 1) * (n_100 - 2) // 2) <= 100 * (P + n_100 - 2)

# %% [markdown]
## Takeaways

- Greedy generation without a cache runs the full model over the full sequence at every step, and uses one row of
  the output.
- The K/V of earlier tokens never change when a token is appended (checked above to float tolerance, in all
  layers), yet the naive loop recomputes them every step.
- Over n steps the naive loop processes n·P + n(n − 1)/2 positions, quadratic in n; keeping K/V brings it down to
  P + n − 1.

[02 · Attention with a KV cache →](02_attention_with_a_kv_cache.ipynb): attention for one new token, the cached
loop, and the six classic ways to break it.
