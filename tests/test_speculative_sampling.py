"""Speculative sampling draws from the target's distribution, whatever the drafter: a chi-square goodness-of-fit test
of the first two generated tokens, (x1, x2), against their exact joint p(x1) p(x2 | x1), computed by enumeration.

N rows of one fixed context are decoded as one batch, each row an independent sample (one generator, its draws
differ per row). Four drafters exercise the four paths of the rule: a draft rejected at the first position (residual
draw), accepted there and rejected at the second, all accepted (the bonus token), and a point mass (prompt lookup).

False alarms: each test fails when its p-value is below 1e-3, so a correct implementation fails a given test with
probability 1e-3 over random seeds (the four together: below 0.4%). The seeds are fixed, so CI gives the same answer
every run. The tests have power: a swapped ratio, a residual of p or a bonus drawn from the wrong position each
fail one of them with p < 1e-12.
"""
import pytest
import torch

import kvlib
from kvlib.model.drafters import Draft, ModelDrafter, PromptLookupDrafter, sampling_probs
from kvlib.model.speculative import SpeculativeRound, speculative_generate

from speculative_support import noisy_copy, varied_gpt2

CONFIG = kvlib.GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=6)
TARGET = varied_gpt2(CONFIG, seed=1, scale=3.0)  # p(x1) from 0.11 to 0.28: every cell well filled
DRAFT = noisy_copy(TARGET, 1.0, seed=3)  # agrees often, not always
CONTEXT = torch.tensor([[1, 2, 3, 1, 2]])  # "1 2" occurred before: prompt lookup proposes "3 1 2"
N, TEMPERATURE, ALPHA = 5000, 1.0, 1e-3


@torch.no_grad()
def exact_joint(model: kvlib.GPT2, context: torch.Tensor) -> torch.Tensor:
    """p(x1, x2 | context), (V, V): p(x1) from the context, p(x2 | x1) from the context and each x1."""
    V = model.config.vocab_size
    p1 = sampling_probs(model(context)[0, -1], TEMPERATURE)  # (V,)
    both = torch.cat([context.repeat(V, 1), torch.arange(V)[:, None]], dim=1)  # (V, T + 1): every x1
    p2 = sampling_probs(model(both)[:, -1], TEMPERATURE)  # (V, V): row x1
    return (p1[:, None] * p2).double()


def chi_square_p_value(pairs: torch.Tensor, joint: torch.Tensor) -> float:
    """p-value of Pearson's chi-square for the observed (x1, x2) pairs (N, 2) against joint (V, V); cells expecting
    fewer than 5 are pooled into one."""
    V = joint.shape[0]
    observed = torch.bincount(pairs[:, 0] * V + pairs[:, 1], minlength=V * V).double()  # (V * V,)
    expected = joint.flatten() * len(pairs)
    small = expected < 5
    observed = torch.cat([observed[~small], observed[small].sum()[None]])
    expected = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = expected > 0
    stat = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2))  # P(chi2_dof > stat)


class TargetThenDraft:
    """Draft 1 from the target itself (always accepted: p/q = 1), drafts 2.. from DRAFT: the rule's second position."""

    def propose(self, input_ids, num_tokens, *, temperature, top_k=None, generator=None):
        tokens, probs = [], []
        for model in [TARGET] + [DRAFT] * (num_tokens - 1):
            q = sampling_probs(model(torch.cat([input_ids, *[t[:, None] for t in tokens]], 1))[:, -1], temperature)
            probs.append(q)
            tokens.append(torch.multinomial(q, 1, generator=generator).squeeze(-1))
        return Draft(torch.stack(tokens, 1), torch.stack(probs, 1))


DRAFTERS = {
    "draft model: residual at position 1": lambda: ModelDrafter(DRAFT),
    "target, then draft model: residual at position 2": TargetThenDraft,
    "the target itself: every draft accepted, the bonus token": lambda: ModelDrafter(TARGET),
    "prompt lookup: a point mass": PromptLookupDrafter,
}


def p_value_of(name: str) -> tuple[float, SpeculativeRound]:
    """The chi-square p-value of N rows sampled with drafter `name`, and their first round."""
    gamma, new = (1, 2) if "itself" in name else (2, 3)  # itself: one draft and the bonus; else 2 drafts to judge
    out = speculative_generate(TARGET, CONTEXT.repeat(N, 1), new, DRAFTERS[name](), num_draft_tokens=gamma,
                               temperature=TEMPERATURE, generator=torch.Generator().manual_seed(0))
    pairs = out.sequences[:, CONTEXT.shape[1]:CONTEXT.shape[1] + 2]  # (N, 2): x1, x2 of every row
    return chi_square_p_value(pairs, exact_joint(TARGET, CONTEXT)), out.rounds[0]


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_speculative_samples_have_the_targets_distribution(name):
    p_value, first = p_value_of(name)
    assert p_value > ALPHA
    if "residual at position 1" in name:
        assert 0 < sum(a == 0 for a in first.num_accepted) < N  # rejections happen, and acceptances
    if "position 2" in name:
        assert min(first.num_accepted) >= 1 and any(a == 1 for a in first.num_accepted)
    if "bonus" in name:
        assert set(first.num_accepted) == {1} and first.tokens.shape[1] == 2


def broken_rule(bug: str):
    """accept_sampling with one mistake: the ratio upside down, the residual not (p - q)+, the bonus from p_1."""
    def accept(drafts, draft_probs, target_probs, generator=None):
        B, k = drafts.shape
        p = target_probs[:, :k].gather(-1, drafts[..., None]).squeeze(-1)
        q = draft_probs.gather(-1, drafts[..., None]).squeeze(-1)
        passed = torch.rand(B, k, generator=generator) < (q / p if bug == "q/p" else p / q).clamp(max=1.0)
        residual = target_probs[:, :k] if bug == "residual p" else (target_probs[:, :k] - draft_probs).clamp(min=0)
        redraw = torch.multinomial(residual.flatten(0, 1) + 1e-30, 1, generator=generator).view(B, k)
        bonus = torch.multinomial(target_probs[:, 0 if bug == "bonus from p_1" else k], 1, generator=generator)
        return passed.long().cumprod(1).sum(1), torch.cat([torch.where(passed, drafts, redraw), bonus], 1)
    return accept


@pytest.mark.parametrize("bug, name", [("q/p", "draft model: residual at position 1"),
                                       ("residual p", "target, then draft model: residual at position 2"),
                                       ("bonus from p_1", "the target itself: every draft accepted, the bonus token")])
def test_the_test_has_power(bug, name, monkeypatch):
    """Each mistake in the rule fails the test of the path it breaks, by a wide margin."""
    monkeypatch.setattr("kvlib.model.speculative.accept_sampling", broken_rule(bug))
    assert p_value_of(name)[0] < 1e-12
