"""Speculative decoding's cache bugs, each a small deliberately broken piece beside the correct one, and a greedy
speculative loop they plug into that checks every verification against the uncached target (the oracle).

Each was reported in a real engine (notebook 09 names the reports):
(1) `crop_by_slicing`: a static cache rolled back the dynamic way, its buffers sliced to the kept length. The
    buffer then ends at the write position: the next write has no room. `crop_by_reallocating` "fixes" that with
    fresh full-size buffers each round: right logits, but every round copies the whole cache to a new address.
(2) `advance_by_one`: the position counter moves one token per round, as in plain decoding, instead of by the
    tokens the round appended: the next verification sits at the wrong positions.
(3) `OneShortDrafter`: after a fully accepted round the draft cache lacks its last draft's K/V (it was never fed),
    and the drafter feeds only the newest (bonus) token, which lands in the last draft's place. The output stays
    right (the target checks everything); only the draft model's logits show it (vLLM saw acceptance drop; with
    kvlib's two small Shakespeare models it barely moves).
(4) `reset_cache`: the cache emptied instead of cropped: the next verification attends to no context at all, and
    the text goes wrong (aprender saw acceptance collapse; with kvlib's two models it rises instead).
(5) `rewind_position_only`: a sliding-window ring rewound by its position alone: once the ring has wrapped, the
    rejected tokens' K/V stay where the window's oldest tokens were.

The correct pieces are `crop_rollback`, `advance_by_appended` and `kvlib.model.drafters.ModelDrafter`.
Shapes: B batch, L tokens so far, k drafts, V vocabulary.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from ..attention import sliding_window_mask
from ..cache.contiguous import StaticKVCache
from ..cache.sliding_window import SlidingWindowKVCache
from ..model.drafters import ModelDrafter
from ..model.generation import make_cache
from ..model.gpt2 import GPT2
from ..model.speculative import SpeculativeRound, accept_greedy

Rollback = Callable[[object, int], None]  # (cache, tokens to keep) -> None


def crop_rollback(cache, keep: int) -> None:
    """Correct: the cache kind's own rollback (crop, rewind, free blocks, restore the ring's recorded slots)."""
    cache.crop(keep)


def crop_by_slicing(cache: StaticKVCache, keep: int) -> None:
    """Bug (1): DynamicKVCache's crop applied to a static cache: each buffer replaced by its first `keep` slots."""
    for i in range(len(cache.key_cache)):
        cache.key_cache[i] = cache.key_cache[i][:, :, :keep]  # (B, nh, keep, hs): a new, shorter tensor
        cache.value_cache[i] = cache.value_cache[i][:, :, :keep]
    cache._lengths = [keep] * len(cache._lengths)


def crop_by_reallocating(cache: StaticKVCache, keep: int) -> None:
    """Bug (1), "fixed": fresh full-size buffers with the kept prefix copied in, every round (a copy, a new address)."""
    for buffers in (cache.key_cache, cache.value_cache):
        for i, old in enumerate(buffers):
            buffers[i] = torch.zeros_like(old)
            buffers[i][:, :, :keep] = old[:, :, :keep]
    cache._lengths = [keep] * len(cache._lengths)


def reset_cache(cache, keep: int) -> None:
    """Bug (4): forget everything instead of only the rejected tokens."""
    cache.reset()


def rewind_position_only(cache: SlidingWindowKVCache, keep: int) -> None:
    """Bug (5): move the ring's position back and restore nothing (what crop does only when nothing was overwritten)."""
    cache._seen = [keep] * len(cache._seen)


def advance_by_appended(appended: int) -> int:
    """Correct: the next round starts after every token this round appended (n + 1)."""
    return appended


def advance_by_one(appended: int) -> int:
    """Bug (2): one token per round, as if every round were a plain decode step."""
    return 1


class OneShortDrafter(ModelDrafter):
    """Bug (3): feeds only the newest token, trusting that the cache holds all the others."""

    def catch_up(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, L = input_ids.shape
        if self.cache is None or self.batch_size != B:
            self.cache, self.batch_size = make_cache(self.model, self.cache_kind, B, self.model.config.n_positions), B
        self.cache.crop(min(self.cache.get_seq_length(), L - 1))  # rejected drafts out: right
        self.last_fed, self.cached_ids = 1, input_ids
        return self.model(input_ids[:, -1:], self.cache, logits_to_keep=1)[:, -1]  # bug: after a full acceptance
        # the cache holds L - 2 tokens, so the bonus token takes the last draft's position and that draft is lost


class OracleRun(NamedTuple):
    sequences: torch.Tensor  # (B, T_prompt + T_new)
    rounds: list[SpeculativeRound]
    target_errors: list[float]  # per round: max |verification logits - uncached target logits|
    draft_errors: list[float]  # per round: max |draft logits - uncached draft logits| (model drafters only)


@torch.no_grad()
def checked_speculative_greedy(model: GPT2, input_ids: torch.Tensor, max_new_tokens: int, drafter,
                               num_draft_tokens: int, cache, *, rollback: Rollback = crop_rollback,
                               advance: Callable[[int], int] = advance_by_appended) -> OracleRun:
    """Greedy speculative decoding written out (kvlib.model.speculative's round, with explicit positions and a
    pluggable rollback), checking each verification, and each model drafter's proposal, against an uncached forward
    over the same tokens. With the correct pieces every error is float rounding and the tokens are generate's."""
    B, T_prompt = input_ids.shape
    model(input_ids[:, :-1], cache)  # the prompt but its last token
    sequence, position = input_ids, T_prompt - 1  # position: where the next verification starts
    rounds, target_errors, draft_errors = [], [], []
    while sequence.shape[1] - T_prompt < max_new_tokens:
        k = min(num_draft_tokens, max_new_tokens - (sequence.shape[1] - T_prompt) - 1)
        drafts = drafter.propose(sequence, k).tokens if k else sequence[:, :0]  # (B, k)
        chunk = torch.cat([sequence[:, -1:], drafts], dim=1)  # (B, 1 + k): the newest token and the drafts
        if hasattr(cache, "record_overwrites"):  # a ring keeps what the chunk overwrites (used by crop only)
            cache.record_overwrites(chunk.shape[1])
        logits = model(chunk, cache, position_ids=torch.arange(position, position + chunk.shape[1])[None])
        oracle = model(torch.cat([sequence, drafts], dim=1), **_window_mask(cache, sequence.shape[1] + k))
        target_errors.append((logits - oracle[:, -chunk.shape[1]:]).abs().max().item())
        if k and getattr(drafter, "last_logits", None) is not None:
            draft_oracle = drafter.model(torch.cat([sequence, drafts[:, :-1]], dim=1))[:, -k:]  # (B, k, V)
            draft_errors.append((drafter.last_logits - draft_oracle).abs().max().item())
        accepted, target = accept_greedy(drafts, logits)
        n = int(accepted.min())
        rollback(cache, sequence.shape[1] + n)
        sequence = torch.cat([sequence, target[:, :n + 1]], dim=1)
        position += advance(n + 1)
        rounds.append(SpeculativeRound(k, tuple(accepted.tolist()), target[:, :n + 1]))
    return OracleRun(sequence, rounds, target_errors, draft_errors)


def _window_mask(cache, T: int) -> dict:
    """The uncached forward's mask: the cache's banded one for a sliding window, the causal default otherwise."""
    if isinstance(cache, SlidingWindowKVCache):
        return {"attention_mask": sliding_window_mask(T, T, cache.window, cache.sink_tokens)[None, None]}
    return {}
