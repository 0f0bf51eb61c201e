"""GPT-2's forward over packed rows (varlen), reading GPT2's own weights: the engine's fast path.

The readable model (kvlib.model.gpt2) takes a (B, T_new) batch, so rows of different lengths must be padded to
the longest one. Here the step's new tokens of every request are one (T, C) stream, end to end: the products and
the layer norms see only real tokens, attention alone needs to know where each request starts (kvlib.serving.
input_batch), and it reads the earlier tokens' K/V from the block pool where they are (kvlib.cache.paged).
Logits are computed only for the rows that produce a token (each request's last position), and in the last layer
only those rows go through the MLP: nothing after the last attention mixes rows.

Proven equal to the readable model: tests/test_packed_forward.py (logits within fp32 rounding, greedy tokens equal).

Shapes: T tokens in the step, C channels, nh heads, nkv K/V heads, hs head size, R_out rows that produce a token,
V vocabulary.
"""
from __future__ import annotations

import torch

from ..cache.paged.cache import PagedKVCache
from ..cache.paged.decode_kernel import decode_work
from ..cache.paged.fast_attention import ATTENTION_BACKENDS, paged_attention
from ..model.gpt2 import GPT2
from .input_batch import PackedBatch
from .prepacked import PrepackedLinear, plain_linear


class PackedGPT2:
    def __init__(self, model: GPT2, kv_cache: PagedKVCache, *, attention: str = "fast", prepack: bool = True) -> None:
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
        self.model, self.kv_cache, self.attention, self.prepack = model, kv_cache, attention, prepack
        self._build_products()

    def _build_products(self) -> None:
        """Per layer: qkv, attention output, MLP in (with GELU), MLP out; and the LM head (tied to wte)."""
        if self.prepack:
            make = lambda m, act="none": PrepackedLinear(m.weight, m.bias, activation=act)  # noqa: E731
            self.lm_head = PrepackedLinear(self.model.lm_head.weight.t(), None)  # (C, V) view of the (V, C) weight
        else:
            make = plain_linear
            self.lm_head = self.model.lm_head
        self.layers = [(make(b.attn.c_attn), make(b.attn.c_proj), make(b.mlp.c_fc, "gelu_tanh"), make(b.mlp.c_proj))
                       for b in self.model.transformer.h]
        self._products = [p for layer in self.layers for p in layer] + [self.lm_head]

    def refresh_if_stale(self) -> None:
        """Rebuild the prepacked copies if any weight changed since they were made (cheap check per step)."""
        if self.prepack and any(p.version != p.key() for p in self._products):
            for p in self._products:
                p.refresh()

    @torch.inference_mode()
    def __call__(self, batch: PackedBatch) -> torch.Tensor:
        """Write the step's K/V into the pool; return the logits (R_out, V) of the rows that produce a token."""
        cfg, h = self.model.config, self.model.transformer
        T, C, nh, nkv, hs = batch.num_tokens, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.refresh_if_stale()
        D = batch.num_decode_rows
        decode = None  # the decode rows' (row, block) work items, once for every layer
        if D and self.attention == "fast":
            decode = decode_work(batch.block_tables[:D], batch.seq_lens[:D], self.kv_cache.block_size)
        x = h.wte(batch.input_ids) + h.wpe(batch.positions)  # (T, C)
        for i, (block, (qkv_proj, out_proj, fc, fc_proj)) in enumerate(zip(h.h, self.layers)):
            q, k, v = qkv_proj(block.ln_1(x)).split([C, nkv * hs, nkv * hs], dim=-1)  # (T, C), (T, nkv*hs) x2
            q, k, v = q.view(T, nh, hs), k.view(T, nkv, hs), v.view(T, nkv, hs)
            key_cache, value_cache = self.kv_cache.key_cache[i], self.kv_cache.value_cache[i]  # (N, S, nkv, hs)
            key_cache.view(-1, nkv, hs).index_copy_(0, batch.slot_mapping, k)  # each token's K/V to its slot
            value_cache.view(-1, nkv, hs).index_copy_(0, batch.slot_mapping, v)
            y = paged_attention(q, k, v, key_cache, value_cache, batch.block_tables, batch.seq_lens,
                                batch.query_start_loc, num_decode_rows=batch.num_decode_rows,
                                query_lens=batch.query_lens, context_lens=batch.context_lens,
                                backend=self.attention, decode=decode).reshape(T, C)  # (T, C): heads side by side
            if i == cfg.n_layer - 1:  # from here on rows do not mix: keep only those that produce a token
                if not len(batch.logits_indices):  # only prompt chunks that are not their last: K/V written, done
                    return x.new_empty(0, cfg.vocab_size)
                x, y = x[batch.logits_indices], y[batch.logits_indices]  # (R_out, C)
            x = x + out_proj(y)
            x = x + fc_proj(fc(block.ln_2(x)))
        return self.lm_head(h.ln_f(x))  # (R_out, V)

