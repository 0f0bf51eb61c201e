"""The training loop that made the Shakespeare GPT-2: it learns, and its pieces do what they say."""
import torch
import torch.nn.functional as F

import kvlib
from kvlib.shakespeare import train
from kvlib.shakespeare.evaluate import perplexity, token_nll


def tiny_cfg(**kw):
    base = dict(n_layer=1, n_head=2, n_embd=16, context=16, batch_size=4, max_steps=40, restricted_steps=20,
                lr=1e-2, min_lr=1e-3, warmup_steps=4, eval_every=20, eval_tokens=256, seed=0)
    return train.TrainConfig(**{**base, **kw})


def test_loss_falls_on_a_tiny_config(monkeypatch):
    # A repetitive stream over 8 distinct token ids, predictable from the two previous tokens (perplexity ~1.15):
    # a 1-layer model learns most of it within a few dozen steps. An untrained one is near uniform over 64 ids.
    ids = torch.tensor([3, 17, 5, 8, 1, 17, 9, 42, 5, 2] * 60, dtype=torch.int32)
    cfg = tiny_cfg(max_steps=60, restricted_steps=30, eval_every=30)
    monkeypatch.setattr(train.TrainConfig, "model_config", lambda self: kvlib.GPT2Config(
        n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd, n_positions=self.context, vocab_size=64))
    untrained = kvlib.random_gpt2(cfg.model_config(), seed=cfg.seed)
    assert perplexity(untrained, ids[:200].long(), context=16) > 40
    model, history = train.train(ids, ids[:200].long(), cfg, progress=False)
    assert history["eval_step"] == [30, 60] and history["eval_loss"][-1] < history["eval_loss"][0]
    assert history["restricted_vocab"] == 8 and history["tokens_seen"] == 60 * 4 * 16
    assert perplexity(model, ids[:200].long(), context=16) < 3


def test_restricted_head_equals_the_full_head_on_its_columns():
    model = kvlib.random_gpt2(kvlib.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=50))
    types = torch.tensor([2, 7, 11, 40])
    x = torch.randn(2, 3, 16)
    with torch.no_grad():
        full = model.lm_head(x)
        torch.testing.assert_close(train.RestrictedHead(model.lm_head, types)(x), full[..., types])


def test_learning_rate_schedule():
    cfg = tiny_cfg(max_steps=100, warmup_steps=10, lr=1.0, min_lr=0.1)
    lrs = [train.get_lr(s, cfg) for s in range(100)]
    assert lrs[0] == 0.1 and lrs[9] == 1.0  # linear warm-up
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # then never rises
    assert abs(train.get_lr(100, cfg) - 0.1) < 1e-12


def test_token_nll_scores_every_predicted_token_once():
    model = kvlib.random_gpt2(kvlib.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=30))
    ids = torch.randint(0, 30, (21,), generator=torch.Generator().manual_seed(0))
    nll = token_nll(model, ids, context=8, batch_size=2)
    assert nll.shape == (7 + 7 + 4,)  # windows of 8, 8, 5 tokens
    with torch.no_grad():
        by_hand = F.cross_entropy(model(ids[None, 16:20])[0], ids[17:21], reduction="none")
    torch.testing.assert_close(nll[-4:], by_hand)
