"""The classic KV-cache bugs, each a small deliberately broken piece, and the cached loop they plug into.

Every bug here gives the same answer as the uncached model in *some* easy case and a different one in a case
that real serving hits, which is why the test that catches it must compare cached with uncached output on
that case (chunked prefill, a second request, a long buffer):

(a) `unoffset_causal_mask`: the causal mask for a chunk after a prefix takes rows [0, T_new) of the full
    triangle instead of [T_total - T_new, T_total). Harmless for a one-shot prefill; wrong for every later chunk,
    and for every decode step in code that masks every forward (`mask_every_forward=True`): the new token then
    sees key 0 only.
(b) `restarting_position_ids`: each forward numbers its tokens from 0 again instead of from the cache length.
(c) `WholeBufferStaticKVCache`: attention over unmasked empty slots: a preallocated cache returns its whole
    buffer, unfilled zero slots included, and nothing masks them (transformers' StaticCache and gpt-fast return
    the whole buffer too, and mask the empty slots).
(d) `no_causal_mask`: every query sees every key, the future included. Harmless for one decode token.
(e) `top_left_causal_sdpa`: SDPA with `is_causal=True`, whose triangle is aligned top-left: with T_q=1, T_k=5
    the one new query sees only key 0. Run a model with it inside `swap_attention(...)`.
(f) `StatefulGPT2`: a cache kept on the module and reused by the next request.
(g) (shown on a toy cache in notebook 02) a preallocated cache that writes and returns all of its `max_batch` rows
    whatever the batch: a batch of 1 comes back broadcast to `max_batch` rows, a smaller batch of several raises.

A run is judged by `Check`: the naive loop's tokens, and logits within a stated tolerance of the uncached model's.

The correct pieces are `kvlib.causal_mask` and `offset_position_ids`. Shapes: B batch, nh heads, hs head size,
T_new tokens fed in one forward, T_total = cached + T_new, V vocabulary.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from .. import attention
from ..attention import causal_mask
from ..cache.contiguous import DynamicKVCache, KVCache, StaticKVCache
from ..model.gpt2 import GPT2

MaskFn = Callable[[int, int, "torch.device | str | None"], torch.Tensor]  # (T_new, T_total, device) -> bool mask
PositionFn = Callable[[int, int, "torch.device | str | None"], torch.Tensor]  # (past_len, T_new, device) -> (T_new,)


class Check(NamedTuple):
    """One cached run judged against the uncached model: the naive loop's tokens, and logits within `tol`."""

    same_text: bool  # the same greedy tokens as the naive (uncached) loop
    max_diff: float  # largest |cached - uncached logit| over the run's own tokens
    tol: float  # the tolerance for float rounding

    @property
    def passes(self) -> bool:
        """Indistinguishable from the uncached model: same tokens and logits within the tolerance."""
        return self.same_text and self.max_diff < self.tol

    @property
    def caught(self) -> bool:
        """The comparison tells this run from the uncached model."""
        return not self.passes


def offset_position_ids(past_len: int, T_new: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Correct: the new tokens continue the sequence, positions past_len .. past_len + T_new - 1. (T_new,)"""
    return torch.arange(past_len, past_len + T_new, device=device)


def restarting_position_ids(past_len: int, T_new: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bug (b): positions 0 .. T_new - 1 in every forward, so each decoded token claims to be at position 0."""
    return torch.arange(T_new, device=device)


def unoffset_causal_mask(T_new: int, T_total: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bug (a): rows [0, T_new) of the (T_total, T_total) triangle. (T_new, T_total), True = may attend.

    New token i (absolute position T_total - T_new + i) sees keys 0..i: the start of the prompt, not the recent
    past and not even itself. Equal to `causal_mask` only when nothing is cached (T_new == T_total).
    """
    return torch.ones(T_new, T_total, dtype=torch.bool, device=device).tril()  # (T_new, T_total)


def no_causal_mask(T_new: int, T_total: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Bug (d): no mask at all. (T_new, T_total) of True: prompt tokens see the tokens after them."""
    return torch.ones(T_new, T_total, dtype=torch.bool, device=device)  # (T_new, T_total)


class WholeBufferStaticKVCache(StaticKVCache):
    """Bug (c): writes like StaticKVCache but returns the whole (B, nh, max_seq_len, hs) buffers.

    The unfilled slots are zeros; a query's score against a zero key is 0, so each empty slot still gets softmax
    weight exp(0 - max) and pulls the output towards the zero values. The output then depends on max_seq_len,
    and so does decode time (attention reads the whole buffer every step). A multi-token forward fails loudly
    instead: its (T_new, T_total) causal mask does not match the max_seq_len keys.
    """

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        super().update(key_states, value_states, layer_idx)
        return self.key_cache[layer_idx], self.value_cache[layer_idx]  # (B, nh, max_seq_len, hs), zeros included


def top_left_causal_sdpa(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Bug (e): SDPA with `is_causal=True` in place of the model's mask. (B, nh, T_new, hs)

    PyTorch builds that triangle top-left: query row i sees keys 0..i whatever T_k is. Right when T_q == T_k (an
    uncached forward or a one-shot prefill); with a cache, T_q < T_k and the new token sees only the oldest keys.
    """
    return F.scaled_dot_product_attention(query, key, value, is_causal=True)  # (B, nh, T_new, hs)


@contextmanager
def swap_attention(implementation: str, fn: Callable[..., torch.Tensor]) -> Iterator[None]:
    """Inside the block, models whose config says `attn_implementation=implementation` attend with `fn`.

    Swaps the entry in kvlib.attention.ATTENTION_FUNCTIONS (the model looks it up on every forward) and puts
    the original back on exit, also when the block raises.
    """
    if implementation not in attention.ATTENTION_FUNCTIONS:
        raise ValueError(
            f"implementation must be one of {tuple(attention.ATTENTION_FUNCTIONS)}, got {implementation!r}"
        )
    if not callable(fn):
        raise TypeError(f"fn must be an attention function (query, key, value, attention_mask), got {fn!r}")
    original = attention.ATTENTION_FUNCTIONS[implementation]
    attention.ATTENTION_FUNCTIONS[implementation] = fn
    try:
        yield
    finally:
        attention.ATTENTION_FUNCTIONS[implementation] = original


def forward_chunk(
    model: GPT2,
    chunk: torch.Tensor,
    cache: KVCache,
    *,
    mask_fn: MaskFn = causal_mask,
    position_fn: PositionFn = offset_position_ids,
    mask_every_forward: bool = False,
) -> torch.Tensor:
    """Feed chunk (B, T_new) through the cache with an explicit mask and positions; logits (B, T_new, V).

    Like kvlib's own model, a single new token gets no mask (it comes after every cached key), unless
    mask_every_forward=True: then mask_fn is applied to every forward, one-token decode steps included, as the
    from-scratch engine's post does (which is how its un-offset mask, bug (a), shows in plain decoding).
    """
    past_len = cache.get_seq_length()
    T_new = chunk.shape[1]
    masked = T_new > 1 or mask_every_forward
    mask = mask_fn(T_new, past_len + T_new, chunk.device)[None, None] if masked else None  # (1, 1, T_new, T_total)
    positions = position_fn(past_len, T_new, chunk.device)[None]  # (1, T_new)
    return model(chunk, cache, attention_mask=mask, position_ids=positions)


@torch.no_grad()
def cached_logits(
    model: GPT2,
    input_ids: torch.Tensor,
    cache: KVCache,
    chunk_sizes: Sequence[int],
    *,
    mask_fn: MaskFn = causal_mask,
    position_fn: PositionFn = offset_position_ids,
    mask_every_forward: bool = False,
) -> torch.Tensor:
    """Logits (B, T, V) for input_ids (B, T) fed through `cache` in chunks of `chunk_sizes` (summing to T).

    With the correct pieces this equals `model(input_ids)` (chunked prefill); compare to catch a bug.
    """
    sizes = list(chunk_sizes)
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes) or sum(sizes) != input_ids.shape[1]:
        raise ValueError(f"chunk_sizes must be positive ints summing to {input_ids.shape[1]} tokens, got {sizes}")
    logits, start = [], 0
    for size in sizes:
        chunk = input_ids[:, start:start + size]  # (B, size)
        logits.append(forward_chunk(model, chunk, cache, mask_fn=mask_fn, position_fn=position_fn,
                                    mask_every_forward=mask_every_forward))
        start += size
    return torch.cat(logits, dim=1)  # (B, T, V)


class GreedyOutput(NamedTuple):
    sequences: torch.Tensor  # (B, T_prompt + max_new_tokens): the prompt and the generated tokens
    logits: torch.Tensor  # (B, T_prompt + max_new_tokens - 1, V): the logits of every position fed in


@torch.no_grad()
def cached_greedy(
    model: GPT2,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    cache: KVCache,
    *,
    prompt_chunks: Sequence[int] | None = None,
    mask_fn: MaskFn = causal_mask,
    position_fn: PositionFn = offset_position_ids,
    mask_every_forward: bool = False,
) -> GreedyOutput:
    """Greedy decoding through `cache`: prefill (in `prompt_chunks`, default one chunk), then one token per step.

    Returns the sequences and the logits the cached path computed. With the correct pieces the sequences equal
    `kvlib.generate(model, input_ids, max_new_tokens, use_cache=False)` and the logits equal
    `model(sequences[:, :-1])`, the uncached forward over the same tokens, to float rounding.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise TypeError(f"max_new_tokens must be an int, got {type(max_new_tokens).__name__}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    chunks = [input_ids.shape[1]] if prompt_chunks is None else prompt_chunks
    pieces = dict(mask_fn=mask_fn, position_fn=position_fn, mask_every_forward=mask_every_forward)
    logits = [cached_logits(model, input_ids, cache, chunks, **pieces)]
    sequence = input_ids
    for _ in range(max_new_tokens):
        token = logits[-1][:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
        sequence = torch.cat([sequence, token], dim=1)  # (B, T + 1)
        if sequence.shape[1] == input_ids.shape[1] + max_new_tokens:
            break  # the last token needs no forward of its own
        logits.append(forward_chunk(model, token, cache, **pieces))  # (B, 1, V)
    return GreedyOutput(sequence, torch.cat(logits, dim=1))


class StatefulGPT2:
    """Bug (f): a wrapper that keeps one cache on itself, as `reset_cache()`-style code does.

    The first request is right. A second request finds the first one's K/V still cached: its prompt is
    numbered after them and attends to them, so it continues the old conversation instead of starting fresh.
    Correct: a new cache per request (what `kvlib.generate` does), or `reset()` between requests.
    """

    def __init__(self, model: GPT2) -> None:
        if not isinstance(model, GPT2):
            raise TypeError(f"model must be a kvlib.GPT2, got {type(model).__name__}")
        self.model = model
        self.cache = DynamicKVCache()  # created once, shared by every request: the bug

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, T_new, V) for input_ids (B, T_new), read against and appended to the module's cache."""
        return forward_chunk(self.model, input_ids, self.cache)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> GreedyOutput:
        """Greedy continuation, reusing whatever the cache already holds (see `cached_greedy`)."""
        return cached_greedy(self.model, input_ids, max_new_tokens, self.cache)

    def reset(self) -> None:
        """Forget earlier requests (the fix, if the cache must live on the module)."""
        self.cache.reset()
