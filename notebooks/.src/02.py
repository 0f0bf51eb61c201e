# %% [markdown]
# 02 · Attention with a KV cache

[← 01 · Generation without a cache](01_generation_without_cache.ipynb) · [03 · O(n²) vs O(n) →](03_complexity_n2_vs_n.ipynb) · [cheat sheet](CHEATSHEET.md)

Notebook 01 showed the naive loop recomputing the keys and values (K/V) of every earlier token at every step.
Here we stop doing that. In this notebook you will:

1. write out attention for **one** new token: its query against the keys and values of every token so far, and
   see why old K/V can be reused and old queries are never needed again;
2. write a whole KV cache yourself (twenty lines) and the offset causal mask, then meet kvlib's versions;
3. decode with a KV cache and check it gives exactly the naive loop's text, with both of kvlib's cache kinds;
4. compare the two cache kinds: what each allocates and copies per step;
5. break the cache in the six classic ways, each next to the correct line, and watch the text fall apart;
6. step through decoding with a slider, uncached and cached side by side.

Shape letters: B batch, nh heads, hs head size, T_new tokens fed to a forward, T_total keys they attend to
(cached + new), C channels, L layers, V vocabulary (the [cheat sheet](CHEATSHEET.md) has them all).
Runs in under two minutes on a quiet 2-core CPU.

# %% tags=["nbval-ignore-output"]
from importlib.metadata import version

import torch
import torch.nn.functional as F
import transformers

import kvlib
from kvlib import bugs, plotting, widgets
from kvlib.trace import compare_prefix, count_positions, record_kv

print(f"torch {torch.__version__}, transformers {transformers.__version__}, kvlib {version('kvlib')}")

# %% [markdown]
## 1. Attention for one new token

Five tokens, one head, small random tensors. Each token's hidden state `x[i]` is projected to a query, a key and a
value. Full causal attention gives every row at once: row *i* attends to keys 0..*i*.

# %%
torch.set_grad_enabled(False)
g = torch.Generator().manual_seed(0)
T, hs = 5, 4  # 5 tokens, head size 4
x = torch.randn(1, 1, T, hs, generator=g)  # (B, nh, T, hs): hidden states, one head
W_q, W_k, W_v = (torch.randn(hs, hs, generator=g) for _ in range(3))
q, k, v = x @ W_q, x @ W_k, x @ W_v  # each (B, nh, T, hs); row i depends on x[i] alone
mask = kvlib.causal_mask(T, T)  # (T, T): True where a query may look
print(mask.int())
full = kvlib.eager_attention(q, k, v, mask)  # (B, nh, T, hs): every row, the uncached way

# %% [markdown]
The newest token needs only its own row: its query against **all** keys, softmax, then a weighted sum of **all**
values. One query, T keys, T values. No mask is needed, since the newest token may see everything before it.

# %%
q_new = q[:, :, -1:]  # (B, nh, 1, hs): only the new token's query
scores = (q_new @ k.transpose(-2, -1)) / hs**0.5  # (B, nh, 1, T)
weights = scores.softmax(dim=-1)  # (B, nh, 1, T): how much the new token takes from each token
one = weights @ v  # (B, nh, 1, hs)
print("attention weights of the new token:", [round(w, 3) for w in weights.flatten().tolist()])
print("one-query attention over K/V == last row of full attention:", torch.allclose(one, full[:, :, -1:], atol=1e-6))

# %%
assert torch.allclose(one, full[:, :, -1:], atol=1e-6)  # the last row of full attention
assert torch.allclose(one, kvlib.eager_attention(q_new, k, v), atol=1e-6)  # kvlib's function, no mask

# %% [markdown]
**Append first, then attend.** The hand-written post ("KV cache principle and code") works the example as
`Attention(Q3, [K0, K1, K2])`: the fourth token's query over the three *cached* keys. That leaves out K3, the new
token's own key: the new token's K/V must be appended to the cache **before** attending, so that it attends to itself too. The post's
example with the toy tensors, token 3 the newest:

# %%
q3 = q[:, :, 3:4]  # (B, nh, 1, hs): the query of token 3
left_out = kvlib.eager_attention(q3, k[:, :, :3], v[:, :, :3])  # Attention(Q3, [K0, K1, K2]): K3, V3 not appended yet
appended = kvlib.eager_attention(q3, k[:, :, :4], v[:, :, :4])  # append K3, V3 first, then attend over K0..K3
print("append first == row 3 of full attention:", torch.allclose(appended, full[:, :, 3:4], atol=1e-6),
      f"| Attention(Q3, [K0, K1, K2]) is off by up to {(left_out - appended).abs().max():.2f}")

# %%
assert torch.allclose(appended, full[:, :, 3:4], atol=1e-6) and not torch.allclose(left_out, appended, atol=1e-3)

# %% [markdown]
**Why the K/V of old tokens can be reused.** A key or value is a projection of its own token's hidden state.
In the first layer that state is the token's embedding plus its position's; in deeper layers it also carries
what attention gathered, but thanks to the causal mask only from tokens at or before it. Appending a token
changes nothing about tokens before it, so their K/V stay valid for the rest of the request.

**Why old queries are never needed again.** Row *i*'s output depends on `q[i]` and K/V rows 0..*i*. It was
used when token *i* was the newest, and adding later tokens cannot change it, because the mask hides them from
row *i*. So a cache keeps K and V, never Q. Two checks on the toy tensors:

# %%
four = kvlib.eager_attention(q[:, :, :4], k[:, :, :4], v[:, :, :4], kvlib.causal_mask(4, 4))  # 4 tokens only
old_rows_unchanged = torch.allclose(four, full[:, :, :4], atol=1e-6)  # old rows never see the 5th token
q_scrambled = torch.cat([torch.randn(1, 1, T - 1, hs, generator=g), q_new], dim=2)  # (B, nh, T, hs): old queries replaced
ignores_old_queries = torch.allclose(kvlib.eager_attention(q_scrambled, k, v, mask)[:, :, -1:], full[:, :, -1:], atol=1e-6)
print("old rows unchanged:", old_rows_unchanged, "| the new row ignores old queries:", ignores_old_queries)

# %%
assert old_rows_unchanged and ignores_old_queries

# %% [markdown]
## 2. A KV cache in twenty lines, and the offset mask

A cache keeps, per layer, the keys and values of every token so far, and each forward appends its new ones.
When a forward feeds T_new tokens after T_total − T_new cached ones, new token *i* sits at absolute position
T_total − T_new + *i*, so its row of the causal mask is row T_total − T_new + *i* of the full triangle: the mask
is **offset**. Both, written out:

# %%
class TinyKVCache:
    """One layer's keys and values, (B, nh, T, hs), grown along T (dim 2) by concatenation."""

    def __init__(self):
        self.k = self.v = None

    def update(self, k_new, v_new):  # (B, nh, T_new, hs) each -> the whole (B, nh, T_total, hs) K and V
        self.k = k_new if self.k is None else torch.cat([self.k, k_new], dim=2)
        self.v = v_new if self.v is None else torch.cat([self.v, v_new], dim=2)
        return self.k, self.v


def offset_mask(T_new, T_total):  # rows [T_total - T_new, T_total) of the (T_total, T_total) triangle
    return torch.ones(T_new, T_total, dtype=torch.bool).tril(diagonal=T_total - T_new)  # (T_new, T_total)


def cached_attention(x_new, cache):  # x_new (B, nh, T_new, hs): project, append first, then attend
    k_all, v_all = cache.update(x_new @ W_k, x_new @ W_v)  # (B, nh, T_total, hs)
    return kvlib.eager_attention(x_new @ W_q, k_all, v_all, offset_mask(x_new.shape[2], k_all.shape[2]))

# %% [markdown]
Feed the five toy tokens through it in chunks of 2, 1 and 2 (a chunked prefill, then a decode step, then two
more at once): the rows must be the rows of full attention.

# %%
cache = TinyKVCache()
rows = [cached_attention(x[:, :, a:b], cache) for a, b in ((0, 2), (2, 3), (3, 5))]  # each (B, nh, b - a, hs)
print("chunked, cached attention == full attention:", torch.allclose(torch.cat(rows, dim=2), full, atol=1e-6),
      "| cache holds", tuple(cache.k.shape))
print("offset mask for 2 new tokens after 3 cached:\n", offset_mask(2, 5).int())

# %%
assert torch.allclose(torch.cat(rows, dim=2), full, atol=1e-6) and cache.k.shape == (1, 1, 5, hs)
assert all(torch.equal(offset_mask(n, t), kvlib.causal_mask(n, t)) for t in range(1, 8) for n in range(1, t + 1))

# %% [markdown]
The last line checks that **`kvlib.causal_mask(T_new, T_total)` is this same offset mask**; `kvlib.DynamicKVCache`
is `TinyKVCache` for every layer at once (`update(key, value, layer_idx)`, as transformers' `DynamicCache`).
Which keys each new query may attend to, drawn for one decode token and for a chunk of three:

# %%
fig = plotting.plot_query_rows({"decode step: T_new = 1 after 6 cached": kvlib.causal_mask(1, 7),
                                "chunk: T_new = 3 after 4 cached": kvlib.causal_mask(3, 7)},
                               title="New queries attend over the cached keys and their own (the offset causal mask)")
plotting.save_figure(fig, "02_query_rows")  # written to figures/ only with KVLIB_WRITE_FIGURES=1

# %% [markdown]
**Positions: `cache_position`.** GPT-2 adds a learned position embedding, so a forward must also know where its
tokens sit. The Hugging Face walkthrough post ("KV-Cache explained") centres on `cache_position`: the absolute
positions of the tokens being fed, `arange(past_len, past_len + T_new)`, which also says which cache slots they
fill. kvlib computes the same from the cache (`past_len = cache.get_seq_length()`) and passes it to the model as
`position_ids`:

# %%
kv = kvlib.DynamicKVCache()
print("cache_position of a 3-token prefill:", torch.arange(kv.get_seq_length(), kv.get_seq_length() + 3).tolist())
model_shapes = kvlib.GPT2Config(n_layer=2, n_head=2, n_embd=8, vocab_size=16, n_positions=16)
tiny = kvlib.random_gpt2(model_shapes)
tiny(torch.tensor([[1, 2, 3]]), kv)  # prefill: the cache now holds 3 tokens
print("cache_position of the next decode token:", torch.arange(kv.get_seq_length(), kv.get_seq_length() + 1).tolist())

# %%
assert kv.get_seq_length() == 3

# %% [markdown]
One layer's cache of the real model grows exactly like `TinyKVCache`: a (1, nh, T, hs) tensor, one column per
token along T. Drawn for a 4-token prompt and three decode steps, with six heads shown:

# %%
fig = plotting.plot_kv_growth(4, 3, 6, head_dim=64, title="One layer's K cache (B=1, nh, T, hs) grows along T, one column per step")
plotting.save_figure(fig, "02_kv_growth")

# %% [markdown]
## 3. The model, and its old K/V

From here on the model is **a small GPT-2 trained on Shakespeare** that ships with kvlib
(`kvlib.load_gpt2("shakespeare")`: 4 layers, 8 heads of 16, 128 channels, 512 positions, the GPT-2 tokenizer), so
that the text is text. Everything below compares two ways of computing the same function, which holds for any
weights; with real GPT-2 weights on your machine, `kvlib.load_gpt2("gpt2")` runs every cell unchanged.
First: in all its layers, the K/V of a prompt are unchanged when one token is appended.

# %%
model, tokenizer = kvlib.load_gpt2("shakespeare")
config = model.config
prompt = "To be, or not to be"
input_ids = torch.tensor([tokenizer.encode(prompt)])  # (1, T_prompt)
T_prompt = input_ids.shape[1]
longer = torch.cat([input_ids, torch.tensor([tokenizer.encode(",")])], dim=1)  # (1, T_prompt + 1)
same = compare_prefix(record_kv(model, input_ids), record_kv(model, longer))
print(f"{config.n_layer} layers, {config.n_head} heads of {config.head_dim}; prompt {prompt!r} = {T_prompt} tokens; "
      f"old K/V unchanged (rtol=atol=1e-5): {same.allclose}")

# %%
assert same.allclose

# %% [markdown]
## 4. Cached decoding gives the naive loop's text

`kvlib.generate(use_cache=False)` is notebook 01's loop. With a cache, the prompt is fed once (the *prefill*),
then each step feeds only the newest token; every layer appends that token's K/V to the cache and attends over
everything cached. Same prompt, 24 new tokens, greedy:

# %%
N_NEW = 24
def continuation(sequence):  # the generated text only, its line breaks shown as " / "
    return tokenizer.decode(sequence[0, T_prompt:].tolist()).replace("\n", " / ")


with count_positions(model) as naive_fed:  # positions fed per forward, for section 7
    naive = kvlib.generate(model, input_ids, N_NEW, use_cache=False)
fed, cached = {}, {}
for kind in ("dynamic", "static"):
    with count_positions(model) as fed[kind]:
        cached[kind] = kvlib.generate(model, input_ids, N_NEW, cache=kind)
print(f"{prompt!r} ->", repr(continuation(naive)))
print("dynamic cache, same tokens:", torch.equal(cached["dynamic"], naive), "| static cache:", torch.equal(cached["static"], naive))

# %%
assert torch.equal(cached["dynamic"], naive) and torch.equal(cached["static"], naive)

# %% [markdown]
Equal tokens is the test that matters. The logits are equal only to float rounding: a cached step pushes one row
through every matrix multiply where the uncached forward pushes T rows, and the kernels may sum in a different order.
Feed the naive tokens through a cache (prefill, then one at a time) and compare every position's logits with one
uncached forward, at a stated tolerance of 1e-4 (Hugging Face's old GPT-2 tests used 1e-3):

# %%
feed = naive[:, :-1]  # (1, T): every token a forward was fed, in either loop
reference = model(feed)  # (1, T, V): the uncached forward, our oracle
decode_chunks = [T_prompt] + [1] * (feed.shape[1] - T_prompt)  # the prefill, then one token per step
def max_diff(logits): return (logits - reference).abs().max().item()
TOL = 1e-4
rounding = {kind: max_diff(bugs.cached_logits(model, feed, kvlib.make_cache(model, kind, 1, feed.shape[1]), decode_chunks))
            for kind in ("dynamic", "static")}
print(f"cached logits == uncached logits within {TOL:g}, both cache kinds:", all(d < TOL for d in rounding.values()))

# %%
assert all(d < TOL for d in rounding.values())

# %% [markdown]
## 5. Two cache kinds: concatenate or preallocate

- `DynamicKVCache` (like transformers' `DynamicCache`) grows by `torch.cat` along the sequence axis: every step
  allocates new tensors one token longer and copies all the old K/V into them. It holds exactly what it needs.
- `StaticKVCache` (like `StaticCache`) allocates `(B, nh, max_seq_len, hs)` buffers once and writes each new
  token's K/V in place at its `cache_position`. It copies nothing old, but reserves `max_seq_len` slots up front.

Bytes are a matter of shapes, so this section, like notebooks 03–05, uses a model with **GPT-2 small's shapes and
random weights** (`kvlib.random_gpt2`). Decode 24 steps with each kind and record, per step, whether the layer-0
key tensor moved (`data_ptr`), the bytes held (`nbytes`), reserved (`nbytes_allocated`) and written:

# %%
gpt2_small = kvlib.random_gpt2(kvlib.GPT2Config.from_name("gpt2"))
ids_small = torch.tensor([[43, 295, 417, 36128, 318, 257]])  # (1, 6): any six token ids
def decode_and_record(kind, n_steps=24):
    cache = kvlib.make_cache(gpt2_small, kind, 1, ids_small.shape[1] + n_steps)
    logits, rows = kvlib.prefill(gpt2_small, ids_small, cache), []
    for _ in range(n_steps):
        address, held_before = cache.key_cache[0].data_ptr(), cache.nbytes
        logits = kvlib.decode_one_token(gpt2_small, logits.argmax(dim=-1), cache)
        moved = cache.key_cache[0].data_ptr() != address  # a new tensor: every byte in it was just written
        rows.append(dict(tokens=cache.get_seq_length(), moved=moved, held=cache.nbytes, allocated=cache.nbytes_allocated,
                         written=cache.nbytes if moved else cache.nbytes - held_before))
    return rows
dyn, sta = decode_and_record("dynamic"), decode_and_record("static")

# %%
per_token = 2 * 12 * 768 * 4  # K and V, 12 layers, 768 channels, fp32
print(f"K/V bytes per token: {per_token:,}")
print("step  tokens | dynamic: moved   held  written | static: moved   held  allocated  written")
for s in (0, 1, 2, len(dyn) - 1):
    d, st = dyn[s], sta[s]
    print(f"{s:4d}  {d['tokens']:6d} | {d['moved']!s:>14} {d['held']:>9,} {d['written']:>9,} | {st['moved']!s:>13} "
          f"{st['held']:>9,} {st['allocated']:>10,} {st['written']:>8,}")

# %%
assert all(r["moved"] for r in dyn) and not any(r["moved"] for r in sta)  # new tensors every step vs one buffer
assert all(r["written"] == r["tokens"] * per_token for r in dyn)  # dynamic rewrites everything: grows with T
assert all(r["written"] == per_token for r in sta)  # static writes one token's K/V
assert all(r["held"] == r["tokens"] * per_token == r["allocated"] == s["held"] for r, s in zip(dyn, sta))  # same K/V held
assert all(r["allocated"] == 30 * per_token for r in sta)  # reserved up front: 6 + 24 slots

# %%
fig = plotting.plot_cache_bytes_per_step(
    [r["tokens"] for r in dyn],
    written={"DynamicKVCache (torch.cat)": [r["written"] for r in dyn], "StaticKVCache (in place)": [r["written"] for r in sta]},
    held={"held by both kinds = DynamicKVCache's allocation": [r["held"] for r in dyn],
          "StaticKVCache's allocation (max_seq_len = 30)": [r["allocated"] for r in sta]},
    title="K/V bytes per decode step, GPT-2 small shapes, fp32, batch 1")
plotting.save_figure(fig, "02_cache_bytes_per_step")
total_dyn, total_sta = sum(r["written"] for r in dyn), sum(r["written"] for r in sta)
print(f"bytes written over 24 decode steps: dynamic {total_dyn:,}, static {total_sta:,} ({total_dyn / total_sta:.1f}x)")

# %% [markdown]
The dynamic cache's copy traffic grows linearly with the sequence, so over a generation it is quadratic, while the
static cache writes a constant amount per step but pays for `max_seq_len` up front. Which is faster depends on the
device and the lengths (notebook 05 measures it); both compute exactly the same attention.

## 6. The classic bugs

Each bug below is a small broken piece, shown next to the correct line, plugged into the same cached greedy
loop, `kvlib.bugs.cached_greedy(model, ids, n, cache, mask_fn=..., position_fn=...)`, which returns the tokens
and the logits it computed. Two checks per run: is the text the naive loop's, and are the logits those of one
uncached forward over the same tokens? The correct piece passes both; the broken one fails both, and its text
shows it. Most bugs hide in some easy case: note which.

# %%
N = 16  # new tokens per run
results = {}  # bug -> (same text as the naive loop?, max |cached - uncached logit| on the run's own tokens)
def check(out, name=None):
    same_tokens = torch.equal(out.sequences, naive[:, :T_prompt + N])
    diff = (out.logits - model(out.sequences[:, :-1])).abs().max().item()  # the uncached forward is the oracle
    if name:
        results[name] = (same_tokens, diff)
        print(f"{name}: {continuation(out.sequences)!r}")
    return same_tokens and diff < TOL  # True: indistinguishable from the uncached model
print("correct:", repr(continuation(naive[:, :T_prompt + N])))

# %% [markdown]
### (a) The causal mask not offset

**Source:** the from-scratch inference engine, part 2 ("KV cache"), whose author found this in his own first
version. The mask for T_new new tokens must be rows `[T_total − T_new, T_total)` of the full triangle; his code
sliced rows `[0, T_new)` — and it sliced the mask **on every forward**, one-token decode steps included:

```python
mask = full_triangle[T_total - T_new : T_total, :T_total]   # correct: kvlib.causal_mask(T_new, T_total)
mask = full_triangle[:T_new, :T_total]                      # the post's first version: rows [0, T_new)
```

So in plain decoding (T_new = 1) the new token gets row 0, `[1, 0, 0, …]`: it sees key 0 only.

# %%
print("decode step, 6 cached: correct", kvlib.causal_mask(1, 7).int().tolist(), "| post", bugs.unoffset_causal_mask(1, 7).int().tolist())
masked_every_step = bugs.cached_greedy(model, input_ids, N, kvlib.DynamicKVCache(), mask_fn=bugs.unoffset_causal_mask,
                                       mask_every_forward=True)
caught_decoding = not check(masked_every_step, "(a) un-offset mask, every forward masked")

# %% [markdown]
**Why kvlib's loop would hide it.** kvlib passes **no mask** when T_new == 1 (a single new token comes after every
cached key, so there is nothing to hide). With that choice the same broken slice survives every one-token decode and
a one-shot prefill (nothing cached: the rows coincide), and shows only when a prompt is fed in chunks (chunked
prefill, or a multi-token user turn appended to a conversation):

# %%
chunks = [1, 2, T_prompt - 3]  # the prompt fed in three chunks
hidden = check(bugs.cached_greedy(model, input_ids, N, kvlib.DynamicKVCache(), mask_fn=bugs.unoffset_causal_mask))
good = check(bugs.cached_greedy(model, input_ids, N, kvlib.DynamicKVCache(), prompt_chunks=chunks))
caught_chunked = not check(bugs.cached_greedy(model, input_ids, N, kvlib.DynamicKVCache(), prompt_chunks=chunks,
                                              mask_fn=bugs.unoffset_causal_mask), "(a) un-offset mask, chunked prefill")
print("no mask for one token, one-shot prefill: passes", hidden, "| correct mask, chunked: passes", good)

# %%
assert caught_decoding and hidden and good and caught_chunked

# %% [markdown]
### (b) Position ids restarting at 0

**Source:** the same from-scratch engine post, its second self-found bug. The new tokens' positions continue the
sequence (`cache_position`); a forward that numbers its own tokens from 0 gets the prefill right and every decode
step wrong:

```python
position_ids = torch.arange(past_len, past_len + T_new)   # correct (cache_position)
position_ids = torch.arange(T_new)                        # bug: every decoded token claims position 0
```

# %%
out = bugs.cached_greedy(model, input_ids, N, kvlib.DynamicKVCache(), position_fn=bugs.restarting_position_ids)
caught = not check(out, "(b) positions restart at 0")
first_token_right = torch.equal(out.sequences[:, :T_prompt + 1], naive[:, :T_prompt + 1])  # from the prefill

# %%
assert caught and first_token_right

# %% [markdown]
### (c) Attention over unmasked empty slots

**Source:** the toy-LLM post with a preallocated cache (torchtune style). Its `KVCache(nn.Module)` registers
`(max_batch, nh, max_seq_len, hs)` buffers with `register_buffer(..., persistent=False)` (so `.to(device)` moves
them but checkpoints do not store them), keeps `cache_pos`, the next free slot, and accepts a smaller batch
than it was built for by using the first rows. Its `update` returns the **whole** buffer. That alone is not the
bug: transformers' `StaticCache` and gpt-fast return the whole buffer too, and **mask** the empty slots. The bug
is attending over them unmasked. The class, with both return lines:

# %%
class ToyKVCache(torch.nn.Module):
    def __init__(self, max_batch, nh, max_seq_len, hs):
        super().__init__()
        self.register_buffer("k", torch.zeros(max_batch, nh, max_seq_len, hs), persistent=False)
        self.register_buffer("v", torch.zeros(max_batch, nh, max_seq_len, hs), persistent=False)
        self.cache_pos = 0  # the next free slot

    def update(self, k_new, v_new, whole_buffer=False):  # (B, nh, T_new, hs) each
        B, T_new = k_new.shape[0], k_new.shape[2]
        assert B <= self.k.shape[0], "a smaller batch uses the first B rows; a larger one does not fit"
        self.k[:B, :, self.cache_pos:self.cache_pos + T_new] = k_new
        self.v[:B, :, self.cache_pos:self.cache_pos + T_new] = v_new
        self.cache_pos += T_new
        if whole_buffer:
            return self.k[:B], self.v[:B]  # the post: (B, nh, max_seq_len, hs), empty zero slots included
        return self.k[:B, :, :self.cache_pos], self.v[:B, :, :self.cache_pos]  # correct: the filled slots

# %% [markdown]
A zero key scores 0, so each empty slot still gets weight exp(0 − max) in the softmax and drags the output
towards zero, more so the bigger the buffer. Three real keys (batch 1 in a cache built for 2) in buffers of 8
and 16 slots:

# %%
toy = {}
for max_seq_len in (8, 16):
    c = ToyKVCache(2, 1, max_seq_len, hs)
    k_all, v_all = c.update(k[:, :, :3], v[:, :, :3], whole_buffer=True)  # (1, 1, max_seq_len, hs)
    w = ((q[:, :, 2:3] @ k_all.transpose(-2, -1)) / hs**0.5).softmax(-1)  # (1, 1, 1, max_seq_len)
    toy[max_seq_len] = w[..., 3:].sum().item()
    print(f"max_seq_len {max_seq_len:2d}: weight on the {max_seq_len - 3} empty slots {toy[max_seq_len]:.3f} (should be 0)")
print("buffers kept out of the state dict (persistent=False):", "k" not in ToyKVCache(1, 1, 4, hs).state_dict())

# %%
assert 0.01 < toy[8] < toy[16]  # wrong, and more wrong the bigger the buffer
assert "k" not in ToyKVCache(1, 1, 4, hs).state_dict()

# %% [markdown]
In the model (kvlib's `bugs.WholeBufferStaticKVCache` returns its whole 64-slot buffer; a multi-token forward
would fail loudly with a shape error, so the prompt is fed one token at a time):

# %%
one_by_one = [1] * T_prompt
good = check(bugs.cached_greedy(model, input_ids, N, kvlib.StaticKVCache(config, 1, 64), prompt_chunks=one_by_one))
caught = not check(bugs.cached_greedy(model, input_ids, N, bugs.WholeBufferStaticKVCache(config, 1, 64),
                                      prompt_chunks=one_by_one), "(c) empty slots unmasked")

# %%
assert good and caught

# %% [markdown]
### (d) No causal mask on a multi-token prompt

**Source:** the hand-written post ("KV cache principle and code"): neither its plain nor its cached attention
has a causal mask. That is right for one new token (it may see every cached key); fed a multi-token prompt, every
prompt token sees the tokens after it, and the K/V it leaves in the cache are wrong in every layer above the first.

```python
weights = scores.masked_fill(~causal_mask(T_new, T_total), float("-inf")).softmax(-1)   # correct
weights = scores.softmax(-1)                                                             # the post: no mask
```

# %%
hidden = check(bugs.cached_greedy(model, input_ids, N, kvlib.DynamicKVCache(), prompt_chunks=one_by_one,
                                  mask_fn=bugs.no_causal_mask))
caught = not check(bugs.cached_greedy(model, input_ids, N, kvlib.DynamicKVCache(), mask_fn=bugs.no_causal_mask),
                   "(d) no causal mask on the prompt")

# %%
assert hidden and caught  # one token at a time it passes; a one-shot prompt catches it

# %% [markdown]
### (e) SDPA's `is_causal=True` during cached decoding

**Source:** not one of the five posts but PyTorch's own API (its docstring says so): `is_causal=True` builds the
triangle from the **top-left** corner, query row *i* sees keys 0..*i*, whatever the number of keys. Right when
T_q == T_k (no cache), wrong with one: with T_q = 1 and T_k = 5 the new token sees only key 0.

```python
F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T_new, T_total))   # correct (none when T_new == 1)
F.scaled_dot_product_attention(q, k, v, is_causal=True)                          # bug with a cache
```

# %%
top_left = F.scaled_dot_product_attention(q_new, k, v, is_causal=True)  # T_q = 1, T_k = 5
print("is_causal with T_q=1, T_k=5 returns the value of token 0:", torch.allclose(top_left, v[:, :, :1], atol=1e-6))
with bugs.swap_attention(config.attn_implementation, bugs.top_left_causal_sdpa):
    hidden = max_diff(model(feed)) < TOL  # uncached, T_q == T_k: the top-left triangle is the right one
    out = bugs.cached_greedy(model, input_ids, N, kvlib.DynamicKVCache())
caught = not check(out, "(e) SDPA is_causal=True with a cache")  # outside the block: the oracle uses the real attention

# %%
assert torch.allclose(top_left, v[:, :, :1], atol=1e-6) and hidden and caught
assert kvlib.attention.ATTENTION_FUNCTIONS[config.attn_implementation] is not bugs.top_left_causal_sdpa  # restored

# %% [markdown]
### (f) A cache kept on the module and reused by the next request

**Source:** the hand-written post again: it keeps the cache on the module and needs a `reset_cache()` call between
requests. Forget it, and the second request's prompt is numbered after, and attends to, the first request's tokens.

```python
cache = kvlib.DynamicKVCache()        # correct: a new cache per request (what kvlib.generate does)
self.cache = kvlib.DynamicKVCache()   # bug: created once in __init__, shared by every request
```

# %%
stateful = bugs.StatefulGPT2(model)
first = check(stateful.generate(input_ids, N))
caught = not check(stateful.generate(input_ids, N), "(f) cache reused by the next request")
stateful.reset()  # the fix, if the cache must live on the module
fixed = max_diff(stateful(feed)) < TOL

# %%
assert first and caught and fixed

# %% [markdown]
### Summary: the equality check catches every bug

Every broken variant moves the logits far beyond float rounding (more than 100 × the tolerance). Most change the
text too, but not all: this small model's greedy text keeps repeating itself, and a bug can shift every logit
without changing which token wins. That is why the check compares logits with the uncached oracle, not only text:

# %%
for name, (equal, diff) in results.items():
    print(f"{name:42s} text == naive: {equal!s:5}  logits beyond {TOL:g}: {diff > TOL}")

# %%
assert len(results) == 7 and all(diff > 100 * TOL for _, diff in results.values())  # logits: every bug caught
assert sum(not equal for equal, _ in results.values()) >= 4  # text: most bugs visibly change it

# %% [markdown]
## 7. Step through it

Drag the slider (in a live notebook) to walk through the decode steps. Each row is one step; each column one token
position. Orange: K/V computed in that step. Blue: K/V read from the cache. Left, the naive loop computes every
position again at every step; right, the cached loop computes one new position per step and reads the rest.

# %% tags=["nbval-ignore-output"]
n_show = 8
widgets.step_through(n_prompt=T_prompt, n_new=n_show, tokens=[tokenizer.decode([t]) for t in naive[0].tolist()])

# %% [markdown]
Where the widget is not live (a static render of this notebook), here are the same steps as a figure. The counts
come from the same functions as the widget, and are checked against what the model really processed:

# %%
uncached_grid, cached_grid = widgets.kv_step_grid(T_prompt, n_show, False), widgets.kv_step_grid(T_prompt, n_show, True)
print(widgets.step_summary(T_prompt, n_show, n_show - 1))
fig = plotting.plot_kv_step_grids({"uncached: recompute everything": uncached_grid, "cached: compute 1, read the rest": cached_grid},
                                  title=f"K/V rows per decode step, prompt of {T_prompt} tokens, {n_show} steps")
plotting.save_figure(fig, "02_kv_step_grid")

# %%
assert (uncached_grid == widgets.COMPUTED).sum(axis=1).tolist() == naive_fed[:n_show]  # what the model was fed
assert (cached_grid == widgets.COMPUTED).sum(axis=1).tolist() == fed["dynamic"][:n_show] == fed["static"][:n_show]

# %% [markdown]
## Exercises

**Exercise 1 (write the cached attention).** Given the toy `q`, `k`, `v` of section 1, compute the attention output
of tokens 3 and 4 fed together after tokens 0..2 are cached, using only `k`, `v` rows 0..4, `q` rows 3..4 and a
mask you build yourself. It must equal rows 3..4 of `full`.

# %% hidden
# Solution
q34 = q[:, :, 3:5]  # (B, nh, 2, hs): the two new queries
scores34 = (q34 @ k.transpose(-2, -1)) / hs**0.5  # (B, nh, 2, 5): over the 3 cached keys and the 2 new ones
mask34 = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)  # rows 3 and 4 of the triangle
out34 = scores34.masked_fill(~mask34, float("-inf")).softmax(-1) @ v  # (B, nh, 2, hs)
assert torch.allclose(out34, full[:, :, 3:5], atol=1e-6) and torch.equal(mask34, kvlib.causal_mask(2, 5))
print("rows 3..4 from the cache == full attention:", torch.allclose(out34, full[:, :, 3:5], atol=1e-6))

# %% [markdown]
**Exercise 2 (find the planted bug).** A colleague's mask function is below. Run it through `cached_greedy` on the
cases of section 6 and say which case catches it, and why.

```python
def colleague_mask(T_new, T_total, device=None):
    return torch.ones(T_new, T_total, dtype=torch.bool, device=device).tril(diagonal=T_total - T_new - 1)
```

# %% hidden
# Solution
def colleague_mask(T_new, T_total, device=None):
    return torch.ones(T_new, T_total, dtype=torch.bool, device=device).tril(diagonal=T_total - T_new - 1)


one_shot = check(bugs.cached_greedy(model, input_ids, N, kvlib.DynamicKVCache(), mask_fn=colleague_mask))
print("one-shot prefill + one-token decoding passes:", one_shot)
# The diagonal is off by one: every query misses its own key (and the first row sees nothing at all, giving NaN).
# Any multi-token forward catches it; kvlib's unmasked one-token steps never see it.
assert not one_shot and not colleague_mask(3, 3)[0].any()

# %% [markdown]
## Takeaways

- A new token's attention needs its own query and the K/V of every token so far, its own included (append,
  then attend). Old K/V never change (causal mask), old queries are never used again: cache K and V, drop Q.
- A cache is a per-layer `torch.cat` along T; a chunk after a prefix needs the **offset** mask, and positions
  continue from the cache length (`cache_position`).
- Cached decoding gives exactly the naive loop's text, with logits equal to float rounding, for both caches.
- `DynamicKVCache` rewrites all its K/V every step (bytes ∝ T); `StaticKVCache` writes one token's worth in place
  but reserves `max_seq_len` up front.
- Each classic bug passes an easy test and fails the cached-vs-uncached comparison on the case it breaks: decoding
  (a in the post's form, b, c, e), chunked prefill (a in kvlib's), a multi-token prompt (d), a second request (f).
  The [cheat sheet](CHEATSHEET.md) lists them.

[← 01 · Generation without a cache](01_generation_without_cache.ipynb) · [03 · O(n²) vs O(n) →](03_complexity_n2_vs_n.ipynb): the cost, counted.
