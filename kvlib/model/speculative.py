"""Speculative decoding: a drafter proposes k tokens, the target checks them all in one forward, keeps the longest
accepted prefix plus one token of its own, and its cache rolls back to exactly the tokens kept.

One round, for a sequence of L tokens whose first L - 1 the target's cache holds (the invariant of every round):
1. draft:     the drafter proposes k <= γ tokens d_1..d_k (to sample: with the distribution q_i each was drawn from);
2. verify:    one target forward over [x_{L-1}, d_1..d_k], at positions L-1..L-1+k, gives p_1..p_{k+1};
3. accept:    greedy: d_i is kept while d_i = argmax p_i. Sampling (Leviathan et al. 2023, Chen et al. 2023): d_i is
              kept with probability min(1, p_i(d_i) / q_i(d_i)); the first rejected position gets a token drawn from
              the residual (p_i - q_i)+, normalised (greedy: argmax p_i); when all k pass, a bonus token from p_{k+1};
4. roll back: the cache crops to L + n for n kept drafts: again every token but the newest, fed first next round.
Whatever the drafter proposes, the output is the target's: its greedy tokens, or samples of its distribution.

A batch keeps the same number of new tokens in every row: n + 1, n the fewest drafts any row accepted (a row that
accepted more keeps its draft where the cut falls). kvlib's caches hold one length for all rows; engines such as
vLLM track a length per row. Where a row's round is cut depends only on its own past draws and on other rows'
independent ones, so each row still samples the target's distribution.

Shapes: B batch, L tokens so far, k drafts this round, V vocabulary.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from .drafters import Draft, sample, sampling_probs
from .generation import _check_generate_args, make_cache
from .gpt2 import GPT2


class SpeculativeRound(NamedTuple):
    num_drafted: int  # k: drafts verified this round
    num_accepted: tuple[int, ...]  # per row: drafts accepted before its first rejection (the batch keeps the fewest)
    tokens: torch.Tensor  # (B, n + 1): the tokens this round appended


class SpeculativeOutput(NamedTuple):
    sequences: torch.Tensor  # (B, T_prompt + T_new): the prompt and the generated tokens
    rounds: list[SpeculativeRound]


def acceptance_rate(rounds: list[SpeculativeRound]) -> float:
    """α measured: accepted drafts / drafts examined (every accepted draft and every first rejection is one trial;
    drafts after a rejection are never examined)."""
    accepted = sum(sum(r.num_accepted) for r in rounds)
    rejected = sum(sum(n < r.num_drafted for n in r.num_accepted) for r in rounds)
    return accepted / max(1, accepted + rejected)


def expected_tokens_per_round(alpha: float, gamma: int) -> float:
    """E(α, γ) = (1 - α^(γ+1)) / (1 - α): tokens per target forward when each of γ drafts passes with
    probability α."""
    return gamma + 1.0 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def verify(model: GPT2, sequence: torch.Tensor, drafts: torch.Tensor, cache) -> torch.Tensor:
    """One target forward over the tokens the cache lacks (the newest) and the drafts (B, k): logits (B, k + 1, V),
    those at positions L-1..L-1+k, which predict d_1..d_k and the token after them."""
    chunk = torch.cat([sequence[:, cache.get_seq_length():], drafts], dim=1)  # (B, 1 + k)
    if hasattr(cache, "record_overwrites"):  # a ring buffer keeps what the chunk overwrites, for the rollback
        cache.record_overwrites(chunk.shape[1])
    return model(chunk, cache, logits_to_keep=drafts.shape[1] + 1)


def accept_greedy(drafts: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """drafts (B, k), target logits (B, k + 1, V) -> (drafts accepted per row (B,), the target's token at each of the
    k + 1 positions (B, k + 1)): d_i is kept while it equals argmax p_i."""
    target = logits.argmax(dim=-1)  # (B, k + 1)
    agree = (drafts == target[:, :-1]).long()  # (B, k)
    return agree.cumprod(dim=1).sum(dim=1), target


def accept_sampling(drafts: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """drafts (B, k) drawn from draft_probs q (B, k, V), target_probs p (B, k + 1, V) -> (drafts accepted per row (B,),
    the token at each position (B, k + 1)): the draft where it passes (probability min(1, p/q)), else a draw from the
    normalised residual (p - q)+; last, a bonus draw from p_{k+1}."""
    B, k = drafts.shape
    p = target_probs[:, :k].gather(-1, drafts[..., None]).squeeze(-1)  # (B, k): p_i(d_i)
    q = draft_probs.gather(-1, drafts[..., None]).squeeze(-1)  # (B, k): q_i(d_i)
    if bool((q <= 0).any()):
        raise ValueError("the drafter's probabilities give one of its own drafts probability 0: probs must be the "
                         "distribution each draft token was drawn from")
    passed = torch.rand(B, k, generator=generator, device=drafts.device) < (p / q).clamp(max=1.0)  # (B, k)
    residual = (target_probs[:, :k] - draft_probs).clamp(min=0)  # (B, k, V): (p - q)+
    mass = residual.sum(dim=-1, keepdim=True)
    residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), target_probs[:, :k])  # p = q: never used
    redraw = sample(residual, generator)  # (B, k)
    bonus = sample(target_probs[:, k], generator)[:, None]  # (B, 1)
    tokens = torch.cat([torch.where(passed, drafts, redraw), bonus], dim=1)  # (B, k + 1)
    return passed.long().cumprod(dim=1).sum(dim=1), tokens


def propose(drafter, sequence: torch.Tensor, num_draft_tokens: int, vocab_size: int, temperature: float,
            top_k: int | None, generator: torch.Generator | None) -> Draft:
    """The drafter's proposal for sequence (B, L), checked; to sample, with q (B, k, V) (a point mass if the drafter
    is deterministic)."""
    tokens, probs = sequence[:, :0], None  # no drafts: the round is one plain decode step
    if num_draft_tokens:
        tokens, probs = drafter.propose(sequence, num_draft_tokens, temperature=temperature, top_k=top_k,
                                        generator=generator)
    if tokens.dim() != 2 or tokens.shape[0] != sequence.shape[0] or tokens.shape[1] > num_draft_tokens:
        raise ValueError(f"the drafter must return (batch, k <= {num_draft_tokens}) tokens, got {tuple(tokens.shape)}")
    if temperature > 0 and probs is None:
        if tokens.shape[1] and not getattr(drafter, "deterministic", False):
            raise ValueError(f"sampling (temperature={temperature}) needs the distribution q each draft was drawn "
                             f"from, but {type(drafter).__name__} returned probs=None; return them (batch, k, "
                             "vocab), or set deterministic = True if its drafts are a point mass (as in prompt lookup)")
        probs = F.one_hot(tokens, vocab_size).float()  # (B, k, V): a point mass on each draft
    if temperature > 0 and tuple(probs.shape) != (*tokens.shape, vocab_size):
        raise ValueError(f"draft probs must be (batch, k, vocab) = {(*tokens.shape, vocab_size)}, got "
                         f"{tuple(probs.shape)}")
    return Draft(tokens, probs)


def speculative_round(model: GPT2, sequence: torch.Tensor, cache, drafter, num_draft_tokens: int,
                      temperature: float = 0.0, top_k: int | None = None,
                      generator: torch.Generator | None = None) -> SpeculativeRound:
    """Draft, verify, accept and roll back once, for sequence (B, L) whose first L - 1 tokens the cache holds."""
    drafts, q = propose(drafter, sequence, num_draft_tokens, model.config.vocab_size, temperature, top_k, generator)
    logits = verify(model, sequence, drafts, cache)  # (B, k + 1, V)
    if temperature == 0:
        accepted, tokens = accept_greedy(drafts, logits)
    else:
        accepted, tokens = accept_sampling(drafts, q, sampling_probs(logits, temperature, top_k), generator)
    n = int(accepted.min())  # the batch keeps n drafts and one token more in every row
    cache.crop(sequence.shape[1] + n)  # the L - 1 cached, the newest token and n drafts: all but tokens[:, n]
    return SpeculativeRound(drafts.shape[1], tuple(accepted.tolist()), tokens[:, :n + 1])


def speculative_generate(
    model: GPT2,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    drafter,
    *,
    num_draft_tokens: int = 4,
    cache="dynamic",
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
    on_round: Callable[[SpeculativeRound, object], None] | None = None,
) -> SpeculativeOutput:
    """Continue input_ids (B, T_prompt) by speculative decoding: the same tokens as `kvlib.generate` (greedy), or
    samples of the same distribution; returns the sequences and every round.

    drafter: a PromptLookupDrafter, a ModelDrafter, or anything with propose(). num_draft_tokens: γ, drafts per round.
    cache: "dynamic", "static" or "paged", or an empty cache object with crop() (e.g. a SlidingWindowKVCache or
    QuantizedKVCache) that the caller can inspect. eos_token_id: rows that emit it are padded with it, as in generate.
    on_round(round, cache) is called after every round, once the cache holds every token but the newest.
    """
    _check_generate_args(model, input_ids, max_new_tokens, True, cache if isinstance(cache, str) else "dynamic",
                         eos_token_id, eos_token_id, temperature, top_k, None)
    if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens (γ, drafts per round) must be an int >= 1, got {num_draft_tokens!r}")
    if not callable(getattr(drafter, "propose", None)):
        raise TypeError(f"drafter must have propose(input_ids, num_tokens, ...) (a PromptLookupDrafter or "
                        f"ModelDrafter), got {type(drafter).__name__}")
    if hasattr(drafter, "check_target"):
        drafter.check_target(model)
    if not isinstance(cache, str):
        if not callable(getattr(cache, "crop", None)):
            raise TypeError(f"cache must be one of 'dynamic', 'static', 'paged' or a cache that can roll back "
                            f"(crop(max_length)); {type(cache).__name__} has no crop()")
        if cache.get_seq_length():
            raise ValueError(f"cache must be empty, it holds {cache.get_seq_length()} tokens")
        window = getattr(cache, "residual_length", None)
        if window is not None and window < num_draft_tokens + 1:
            raise ValueError(f"a QuantizedKVCache rolls back only what is still in full precision: residual_length "
                             f"({window}) must be >= num_draft_tokens + 1 ({num_draft_tokens + 1})")
    with torch.inference_mode():
        sequences, rounds = _speculative_loop(model, input_ids, max_new_tokens, drafter, num_draft_tokens, cache,
                                              temperature, top_k, generator, eos_token_id, on_round)
    return SpeculativeOutput(sequences.clone(), [r._replace(tokens=r.tokens.clone()) for r in rounds])


def _speculative_loop(model, input_ids, max_new_tokens, drafter, num_draft_tokens, cache, temperature, top_k,
                      generator, eos_token_id, on_round) -> tuple[torch.Tensor, list[SpeculativeRound]]:
    B, T_prompt = input_ids.shape
    kv = make_cache(model, cache, B, T_prompt + max_new_tokens) if isinstance(cache, str) else cache
    sequence, rounds = input_ids, []
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    if max_new_tokens and T_prompt > 1:
        model(input_ids[:, :-1], kv, logits_to_keep=1)  # the prompt but its last token: the invariant holds
    while sequence.shape[1] - T_prompt < max_new_tokens and not bool(finished.all()):
        remaining = max_new_tokens - (sequence.shape[1] - T_prompt)
        rnd = speculative_round(model, sequence, kv, drafter, min(num_draft_tokens, remaining - 1), temperature,
                                top_k, generator)
        if eos_token_id is not None:  # tokens after a row's eos become eos (the padding), as in generate
            is_eos = (rnd.tokens == eos_token_id).long()
            after = finished[:, None] | (is_eos.cumsum(dim=1) - is_eos > 0)  # (B, n + 1)
            rnd = rnd._replace(tokens=rnd.tokens.masked_fill(after, eos_token_id))
            finished |= is_eos.bool().any(dim=1)
        sequence = torch.cat([sequence, rnd.tokens], dim=1)  # (B, L + n + 1)
        rounds.append(rnd)
        assert kv.get_seq_length() == sequence.shape[1] - 1, "the cache must hold every token but the newest"
        if on_round is not None:
            on_round(rnd, kv)
    return sequence, rounds
