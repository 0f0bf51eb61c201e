"""A step of decode rows only, as one graph compiled by torch.compile: vLLM's default on CPU (its model compiled,
dynamic in the number of tokens), for kvlib's packed forward.

Why: run eagerly, a step dispatches some twenty ops per layer from Python, and the layer norms, residual adds and
the attention's small ops each make a pass over memory of their own. Compiled, the whole step is one call: the
compiler fuses the elementwise work into the loops around it, writes the attention as the loops of
kvlib.cache.paged.decode_kernel (K/V read in place), and calls the same products as the eager step (oneDNN's
prepacked ones; MKL's over (out, in) weights for up to three rows: kvlib.serving.prepacked), their weights frozen
into the graph as constants (inductor's `freezing`). The row test of the products is a guard, so a model gets two
graphs: one for steps of up to three rows, one for more. The graph is the same `gpt2_layers`
(kvlib.serving.packed_layers) the eager step runs.

Costs and rules:
- Compiling takes tens of seconds, once per model and process for each of the two graphs (inductor also caches on
  disk), so kvlib's engine runs eagerly unless asked (`LLMEngine(..., enforce_eager=False)`), unlike vLLM. Mixed
  steps (a prompt chunk in them) always run eagerly: the graphs for decode rows cover almost every step of a run.
- The number of rows, of work items and of blocks per row stay symbolic; the compiler specialises sizes 0 and 1, so
  a step with one row (or one block per row) gets a padding row: one token in a block that no request owns
  (`padding_block`), whose logits are dropped.
- The weights are frozen in: if they change in place, the next step of decode rows compiles again (the engine
  checks every step).
- The pool is one input, (2, L, N, nkv, S, hs) (PagedKVCache.kv_pool), not 2L per-layer tensors: every call passes
  each input's symbolic sizes and checks its guards (24 tensors cost 0.15-0.28 ms a step more here, measured on a
  small model). Each new K/V is written into it by kvlib.cache.paged.layout.write_layer_slots, in place (written
  through a view of it, the compiled step would copy the whole pool).

Proven equal to the eager step, token for token: tests/test_compiled_step.py.

Shapes: R decode rows (one token each), C channels, nh heads, nkv K/V heads, hs head size, V vocabulary,
I work items, W blocks in the longest row, N blocks of S slots.
"""
from __future__ import annotations

import torch
import torch.fx.experimental._config as shape_config
import torch.nn as nn

from ..cache.paged.cache import PagedKVCache
from ..cache.paged.decode_kernel import DecodeWork, decode_work, paged_decode_attention
from ..cache.paged.layout import HEAD_DIMS, write_layer_slots
from ..config import GPT2Config
from ..model.gpt2 import GPT2
from .input_batch import PackedBatch
from .packed_layers import gpt2_layers
from .prepacked import GPT2Products


class DecodeGraph(nn.Module):
    """The all-decode step over one model's weights (the module torch.compile freezes)."""

    def __init__(self, config: GPT2Config, transformer: nn.Module, products: GPT2Products) -> None:
        super().__init__()
        self.config = config
        self.transformer, self.products = transformer, products  # the model's own modules, not copies

    def forward(self, kv_pool: torch.Tensor, input_ids: torch.Tensor, positions: torch.Tensor,
                slot_mapping: torch.Tensor, seq_lens: torch.Tensor, block: torch.Tensor, row: torch.Tensor,
                first_pos: torch.Tensor, merge_index: torch.Tensor) -> torch.Tensor:
        """R decode rows (input_ids, positions, slot_mapping, seq_lens: (R,)) over the pool (2, L, N, nkv, S, hs)
        -> logits (R, V)."""
        work = DecodeWork(block, row, first_pos, merge_index)

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            write_layer_slots(kv_pool, i, slot_mapping, k, v)
            return paged_decode_attention(q, kv_pool[0, i], kv_pool[1, i], seq_lens, work)  # (R, nh, hs)

        h = self.transformer
        x = h.wte(input_ids) + h.wpe(positions)  # (R, C)
        return gpt2_layers(self.config, h, self.products, x, attend)  # (R, V)


def _compiled_graph(model: GPT2, products: GPT2Products):
    """The compiled DecodeGraph of this model's products, built on first use and again after the weights changed
    (whichever engine's step noticed the change: the graph is stamped with the weights' version)."""
    version, compiled = products.__dict__.get("_compiled_decode", (None, None))
    if compiled is None or version != products.weights_version:
        graph = DecodeGraph(model.config, model.transformer, products).eval()
        compiled = torch.compile(graph, dynamic=True, fullgraph=True)
        # Not a submodule: kept out of state_dict() and modules().
        products.__dict__["_compiled_decode"] = (products.weights_version, compiled)
    return compiled


def pad_decode_step(input_ids, positions, slot_mapping, seq_lens, block_tables, padding_block: int, block_size: int):
    """Append a padding row (token 0 at position 0, written to slot 0 of padding_block, one key) when there is one
    row, and a column to the block tables when every row fits one block: no size below 2 reaches the compiler."""
    if len(input_ids) < 2:
        one = lambda t, value: torch.cat([t, t.new_full((1,), value)])  # noqa: E731
        input_ids, positions = one(input_ids, 0), one(positions, 0)
        slot_mapping, seq_lens = one(slot_mapping, padding_block * block_size), one(seq_lens, 1)
        block_tables = torch.cat([block_tables, block_tables.new_full((1, block_tables.shape[1]), padding_block)])
    if block_tables.shape[1] < 2:
        block_tables = torch.cat([block_tables, block_tables.new_full((len(block_tables), 1), padding_block)], dim=1)
    return input_ids, positions, slot_mapping, seq_lens, block_tables


class CompiledDecodeStep:
    """One engine's compiled all-decode step: its pool, its padding block, the model's compiled graph."""

    def __init__(self, model: GPT2, products: GPT2Products, kv_cache: PagedKVCache, padding_block: int) -> None:
        self.model, self.products, self.kv_cache, self.padding_block = model, products, kv_cache, padding_block
        # (2, L, N, nkv, S, hs): K/V, layers, heads and head size compiled in; blocks and slots symbolic. One tensor,
        # not 2L: each input's symbolic sizes are passed, and its guards checked, on every call.
        for d in (0, 1, *(2 + d for d in HEAD_DIMS)):
            torch._dynamo.mark_static(kv_cache.kv_pool, d)

    def __call__(self, batch: PackedBatch) -> torch.Tensor:
        """A step of decode rows only: writes each row's K/V, returns logits (R, V)."""
        R, kv = batch.num_tokens, self.kv_cache
        input_ids, positions, slot_mapping, seq_lens, block_tables = pad_decode_step(
            batch.input_ids, batch.positions, batch.slot_mapping, batch.seq_lens, batch.block_tables,
            self.padding_block, kv.block_size)
        work = decode_work(block_tables, seq_lens, kv.block_size)
        graph = _compiled_graph(self.model, self.products)
        # No guard on sizes that happen to be equal (duck sizing): one compilation serves every step of more than
        # three rows, another every smaller one. Freezing: the weights become constants of the graph (the prepacked
        # products need it). No weight_prepack: inductor's own pass would turn the small steps' (N, K) products back
        # into oneDNN's. The C++ wrapper: the graph's ~100 kernel calls made from generated C++ rather than Python
        # (about a millisecond a step here).
        with shape_config.patch(use_duck_shape=False, backed_size_oblivious=True), \
                torch._dynamo.config.patch(recompile_limit=64), \
                torch._inductor.config.patch({"freezing": True, "cpp_wrapper": True, "cpp.weight_prepack": False}):
            logits = graph(kv.kv_pool, input_ids, positions, slot_mapping, seq_lens, work.block, work.row,
                           work.first_pos, work.merge_index)
        return logits[:R]  # (R, V): the padding row's dropped
