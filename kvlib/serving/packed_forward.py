"""GPT-2's forward over packed rows (varlen), reading GPT2's own weights: the engine's fast path.

The readable model (kvlib.model.gpt2) takes a (B, T_new) batch, so rows of different lengths must be padded to
the longest one. Here the step's new tokens of every request are one (T, C) stream, end to end: the products and
the layer norms see only real tokens, attention alone needs to know where each request starts (kvlib.serving.
input_batch), and it reads the earlier tokens' K/V from the block pool where they are (kvlib.cache.paged).
Logits are computed only for the rows that produce a token (each request's last position), and in the last layer
only those rows go through the MLP: nothing after the last attention mixes rows.

`gpt2_layers` (kvlib.serving.packed_layers) is that stack, written once; `PackedGPT2` runs it eagerly for any step,
and, unless enforce_eager, hands a step of decode rows only to the same stack compiled as one graph
(kvlib.serving.compiled_step).

Proven equal to the readable model: tests/test_packed_forward.py (logits within fp32 rounding, greedy tokens equal).

Shapes: T tokens in the step, C channels, nh heads, nkv K/V heads, hs head size, R_out rows that produce a token,
V vocabulary.
"""
from __future__ import annotations

import warnings

import torch

from ..cache.paged.cache import PagedKVCache
from ..cache.paged.decode_kernel import decode_work
from ..cache.paged.fast_attention import ATTENTION_BACKENDS, paged_attention
from ..cache.paged.layout import write_layer_slots
from ..model.gpt2 import GPT2
from .input_batch import PackedBatch
from .packed_layers import gpt2_layers
from .prepacked import GPT2Products


class PackedGPT2:
    """enforce_eager=False needs `padding_block`: a block of kv_cache that no request owns (the compiled graph's
    padding row writes there; see kvlib.serving.compiled_step)."""

    def __init__(self, model: GPT2, kv_cache: PagedKVCache, *, attention: str = "fast", prepack: bool = True,
                 enforce_eager: bool = True, padding_block: int | None = None) -> None:
        if attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, got {attention!r}")
        if not enforce_eager and attention != "fast":
            raise ValueError(f"enforce_eager=False compiles the engine's own attention: attention must be 'fast', "
                             f"got {attention!r}")
        self.model, self.kv_cache, self.attention = model, kv_cache, attention
        self.products = GPT2Products.for_model(model, prepack)  # shared by every engine on this model
        if not enforce_eager and not (isinstance(padding_block, int) and 0 <= padding_block < kv_cache.num_blocks):
            raise ValueError(f"enforce_eager=False needs padding_block, a block of the pool no request owns, in "
                             f"[0, {kv_cache.num_blocks}); got {padding_block!r}")
        self.compiled_decode = None
        if not enforce_eager:
            from .compiled_step import CompiledDecodeStep  # noqa: PLC0415 - torch.compile only when asked
            self.compiled_decode = CompiledDecodeStep(model, self.products, kv_cache, padding_block)

    @torch.inference_mode()
    def __call__(self, batch: PackedBatch) -> torch.Tensor:
        """Write the step's K/V into the pool; return the logits (R_out, V) of the rows that produce a token."""
        h = self.model.transformer
        self.products.refresh_if_stale()
        D = batch.num_decode_rows
        if self.compiled_decode is not None and D == len(batch.query_lens):  # decode rows only: one graph
            try:
                return self.compiled_decode(batch)
            except Exception as e:  # noqa: BLE001 - a compiler failure (no C++ compiler, ...): eager, say why once
                self.compiled_decode = None
                warnings.warn(f"kvlib: torch.compile could not build the decode step ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); running it eagerly (same results, "
                              "slower)", RuntimeWarning, stacklevel=2)
        decode = None  # the decode rows' (row, block) work items, once for every layer
        if D and self.attention == "fast":
            decode = decode_work(batch.block_tables[:D], batch.seq_lens[:D], self.kv_cache.block_size)

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            key_cache, value_cache = self.kv_cache.key_cache[i], self.kv_cache.value_cache[i]  # (N, nkv, S, hs)
            write_layer_slots(self.kv_cache.kv_pool, i, batch.slot_mapping, k, v)
            return paged_attention(q, k, v, key_cache, value_cache,
                                   batch.block_tables, batch.seq_lens, batch.query_start_loc,
                                   num_decode_rows=D, query_lens=batch.query_lens, context_lens=batch.context_lens,
                                   backend=self.attention, decode=decode)

        x = h.wte(batch.input_ids) + h.wpe(batch.positions)  # (T, C)
        return gpt2_layers(self.model.config, h, self.products, x, attend, keep=batch.logits_indices)
