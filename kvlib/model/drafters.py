"""Drafters for speculative decoding: cheap proposals that the target model verifies.

A drafter has one method, `propose(input_ids, num_tokens, *, temperature, top_k, generator) -> Draft`: given the
sequence so far (B, L), up to num_tokens guesses of what follows, each with the distribution it was drawn from
when sampling. Two kinds, both offline:
- PromptLookupDrafter: no model. Find the sequence's last n-gram earlier in the sequence and propose what followed
  it there (prompt lookup decoding, transformers' `prompt_lookup_num_tokens`). Its drafts are deterministic: as a
  distribution, a point mass on each draft token.
- ModelDrafter: a smaller GPT-2 with the target's tokenizer (transformers' `assistant_model`), one token per step
  through its own KV cache. That cache must hold a prefix of the sequence: each proposal first crops it to the part
  the sequence still agrees with (rejected drafts out), then feeds what it lacks: one token after a partly rejected
  round, two after a fully accepted one (its last draft was never fed, and the target added a bonus token).

Shapes: B batch, L tokens so far, k drafts, V vocabulary.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from .generation import CACHE_KINDS, make_cache, sample_next_token, top_k_filter
from .gpt2 import GPT2

SHAKESPEARE_DRAFT_DIR = Path(__file__).resolve().parent.parent / "data" / "shakespeare-draft"


class Draft(NamedTuple):
    tokens: torch.Tensor  # (B, k) proposed token ids, k <= the number asked for (0: nothing to propose)
    probs: torch.Tensor | None  # (B, k, V) the distribution each token was drawn from; None for a point mass


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None) -> torch.Tensor:
    """The distribution `sample_next_token` draws from, for logits (..., V): softmax(logits / T) over the top k, in
    float32 or better."""
    logits = top_k_filter(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, top_k)
    return torch.softmax(logits, dim=-1)  # (..., V)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of probs (..., V), drawn by inverting the cumulative distribution: the same law as
    torch.multinomial(probs, 1), which on a CPU is far slower for a 50,257-token vocabulary. Rows need not sum to 1."""
    cdf = probs.to(torch.promote_types(probs.dtype, torch.float32)).cumsum(dim=-1)  # (..., V)
    u = torch.rand(cdf.shape[:-1] + (1,), generator=generator, dtype=cdf.dtype, device=probs.device) * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True).clamp(max=probs.shape[-1] - 1).squeeze(-1)  # (...,): first cdf > u


def _check_request(input_ids: torch.Tensor, num_tokens: int) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise TypeError("input_ids must be a (batch, seq_len) torch.long tensor")
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 0:
        raise ValueError(f"num_tokens must be an int >= 0, got {num_tokens!r}")


class PromptLookupDrafter:
    """Propose the tokens that followed the first earlier occurrence of the sequence's last n-gram.

    Tries n = max_ngram_size down to 1 and takes the first match from the left, as transformers'
    PromptLookupCandidateGenerator does (max_matching_ngram_size=2). A row with no match, or a shorter one, is padded
    with its own last token: any token is safe to propose, the target only keeps what it would have produced itself.
    """

    deterministic = True  # each draft is a point mass: accepted with probability p(token) when sampling

    def __init__(self, max_ngram_size: int = 2) -> None:
        if isinstance(max_ngram_size, bool) or not isinstance(max_ngram_size, int) or max_ngram_size < 1:
            raise ValueError(f"max_ngram_size must be an int >= 1, got {max_ngram_size!r}")
        self.max_ngram_size = max_ngram_size

    def lookup(self, row: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """Up to num_tokens ids (k,) that followed the first earlier match of row's last n-gram; (0,) if none."""
        L = row.numel()
        for n in range(min(self.max_ngram_size, L - 1), 0, -1):
            windows = row.unfold(0, n, 1)  # (L - n + 1, n): every n-gram, by start position
            starts = (windows[:-1] == row[-n:]).all(dim=1).nonzero().flatten()  # matches before the last n-gram
            if starts.numel():
                start = int(starts[0]) + n
                return row[start:start + num_tokens]
        return row[:0]

    @torch.no_grad()
    def propose(self, input_ids: torch.Tensor, num_tokens: int, *, temperature: float = 0.0,
                top_k: int | None = None, generator: torch.Generator | None = None) -> Draft:
        _check_request(input_ids, num_tokens)
        found = [self.lookup(row, num_tokens) for row in input_ids]
        k = max(f.numel() for f in found)
        tokens = input_ids[:, -1:].repeat(1, k)  # (B, k): the last token, where a row found less
        for b, f in enumerate(found):
            tokens[b, :f.numel()] = f
        return Draft(tokens, None)

    def __repr__(self) -> str:
        return f"PromptLookupDrafter(max_ngram_size={self.max_ngram_size})"


class ModelDrafter:
    """Draft with a smaller GPT-2 that shares the target's vocabulary: num_tokens one-token steps through its cache.

    `last_fed` is how many tokens the latest proposal fed before drafting (1, or 2 after a fully accepted round).
    """

    deterministic = False

    def __init__(self, model: GPT2, cache: str = "dynamic") -> None:
        if not isinstance(model, GPT2):
            raise TypeError(f"model must be a kvlib.GPT2 (the draft model), got {type(model).__name__}")
        if cache not in CACHE_KINDS:
            raise ValueError(f"cache must be one of {CACHE_KINDS}, got {cache!r}")
        self.model, self.cache_kind = model, cache
        self.cache = None  # built at the first proposal, for its batch size
        self.batch_size = 0
        self.cached_ids: torch.Tensor | None = None  # (B, T_cached) the tokens whose K/V the cache holds
        self.last_fed = 0
        self.last_logits: torch.Tensor | None = None  # (B, k, V): the logits the latest drafts were chosen from

    def check_target(self, target: GPT2) -> None:
        """Raise unless this drafter can propose tokens for target: the same vocabulary (the same tokenizer)."""
        ours, theirs = self.model.config.vocab_size, target.config.vocab_size
        if ours != theirs:
            raise ValueError(f"the draft model has a vocabulary of {ours} tokens, the target {theirs}: a draft model "
                             "must share the target's tokenizer (its token ids mean the same tokens)")

    def agreed_length(self, input_ids: torch.Tensor) -> int:
        """How many leading tokens of input_ids (all rows) the cache holds K/V for: where it first disagrees."""
        held = self.cached_ids
        if held is None or held.shape[0] != input_ids.shape[0]:
            return 0
        n = min(held.shape[1], input_ids.shape[1])
        same = (held[:, :n] == input_ids[:, :n]).all(dim=0)  # (n,)
        return n if bool(same.all()) else int((~same).nonzero()[0])

    def catch_up(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Roll the cache back to what still agrees with input_ids (B, L), keeping at most L - 1 tokens, feed the
        rest and return the last position's logits (B, V)."""
        B, L = input_ids.shape
        if self.cache is None or self.batch_size != B:  # a new batch: a new cache
            self.cache = make_cache(self.model, self.cache_kind, B, self.model.config.n_positions)
            self.batch_size, self.cached_ids = B, None
        keep = min(self.agreed_length(input_ids), L - 1)
        self.cache.crop(keep)
        self.last_fed = L - keep
        self.cached_ids = input_ids
        return self.model(input_ids[:, keep:], self.cache, logits_to_keep=1)[:, -1]

    @torch.no_grad()
    def propose(self, input_ids: torch.Tensor, num_tokens: int, *, temperature: float = 0.0,
                top_k: int | None = None, generator: torch.Generator | None = None) -> Draft:
        _check_request(input_ids, num_tokens)
        k = min(num_tokens, self.model.config.n_positions - input_ids.shape[1])  # the draft model's positions
        if k <= 0:
            return Draft(input_ids[:, :0], None)
        logits = self.catch_up(input_ids)  # (B, V)
        tokens, probs, all_logits = [], [], []
        for i in range(k):
            all_logits.append(logits)
            if temperature > 0:
                probs.append(sampling_probs(logits, temperature, top_k))  # (B, V): q of draft i
                tokens.append(sample(probs[-1], generator))
            else:
                tokens.append(sample_next_token(logits))  # (B,) argmax
            if i < k - 1:  # the last draft is not fed: if all are accepted, the next catch_up feeds it
                logits = self.model(tokens[-1][:, None], self.cache, logits_to_keep=1)[:, -1]
        drafts = torch.stack(tokens, dim=1)  # (B, k)
        self.last_logits = torch.stack(all_logits, dim=1)  # (B, k, V)
        self.cached_ids = torch.cat([input_ids, drafts[:, :-1]], dim=1)  # (B, L + k - 1)
        return Draft(drafts, torch.stack(probs, dim=1) if probs else None)

    def __repr__(self) -> str:
        c = self.model.config
        return f"ModelDrafter({c.n_layer} layers, width {c.n_embd}, cache={self.cache_kind!r})"


def load_shakespeare_draft(dtype: torch.dtype = torch.float32) -> GPT2:
    """The draft model that ships with kvlib for the Shakespeare GPT-2 (made by python -m kvlib.shakespeare.draft)."""
    from .weights import load

    model = load(SHAKESPEARE_DRAFT_DIR, dtype)
    model.weights_source = "kvlib's Shakespeare draft model (see its MODEL_CARD.md)"
    return model
