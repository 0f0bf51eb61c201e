"""Train kvlib's small Shakespeare GPT-2: `python -m kvlib.shakespeare.train --out DIR`.

It reproduces the checkpoint that ships in `kvlib/data/shakespeare-gpt2/` (seeded; the same machine and thread
count give the same weights): fetch the works (kvlib.shakespeare.corpus), tokenize them with the GPT-2 BPE, train
kvlib's own GPT2 with AdamW on random 512-token windows, evaluate on the held-out works, and write the weights
(fp16 safetensors, a transformers checkpoint), the loss curve and a model card.

Shapes: B windows per step, T tokens per window, V vocabulary.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import GPT2Config
from .evaluate import perplexity
from ..model.gpt2 import GPT2


@dataclass
class TrainConfig:
    n_layer: int = 4  # transformer blocks
    n_head: int = 8  # attention heads (hs = 16): 8 has four divisors for notebook 08's GQA sweep
    n_embd: int = 128  # width; the tied 50,257 x 128 embedding is 6.4 M of the 7.2 M parameters
    context: int = 512  # tokens per training window (= n_positions)
    batch_size: int = 8  # windows per step
    max_steps: int = 500
    restricted_steps: int = 440  # steps whose softmax covers only the token types of the training text
    lr: float = 3e-3  # peak AdamW learning rate, after a linear warm-up
    min_lr: float = 3e-4  # cosine decay ends here
    warmup_steps: int = 40
    weight_decay: float = 0.1  # on matrices only (not biases, LayerNorms, embeddings)
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_tokens: int = 32_768  # held-out tokens scored at each evaluation (all of them at the end)
    seed: int = 0

    def model_config(self) -> GPT2Config:
        return GPT2Config(n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd, n_positions=self.context,
                          attn_implementation="eager")


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.min_lr at cfg.max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def get_batch(ids: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """B random windows of the 1-D token ids: inputs (B, T) and the next tokens (B, T)."""
    starts = torch.randint(0, len(ids) - cfg.context - 1, (cfg.batch_size,), generator=generator)
    rows = torch.stack([ids[s: s + cfg.context + 1] for s in starts.tolist()]).long()  # (B, T + 1)
    return rows[:, :-1], rows[:, 1:]


def make_optimizer(model: GPT2, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the block matrices only (nanoGPT's split)."""
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "wte" not in n and "wpe" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "wte" not in n and "wpe" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


class RestrictedHead(torch.nn.Module):
    """The tied LM head over a subset of the vocabulary: logits (B, T, K) for the K token ids in `types`.

    Shakespeare uses about 19,000 of GPT-2's 50,257 tokens. The other 31,000 never occur as targets, and a full
    softmax only teaches the model to keep their probability low: cheap to learn at the end, but it makes every
    step's head 2.6x as costly. So training starts over the tokens that occur and finishes over all of them.
    """

    def __init__(self, head: torch.nn.Module, types: torch.Tensor) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("types", types, persistent=False)  # (K,) sorted token ids

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.head.weight[self.types])  # (B, T, K)


def train(train_ids: torch.Tensor, heldout_ids: torch.Tensor, cfg: TrainConfig, progress: bool = True,
          init: GPT2 | None = None, *, resume: dict | None = None, stop_step: int | None = None) -> tuple[GPT2, dict]:
    """Train a fresh GPT2 (or continue `init`) on 1-D train_ids; return (model, history) with the loss curve and
    held-out scores.

    A run can be cut into pieces: stop_step ends this call early (the schedule still runs to cfg.max_steps), and
    a `resume` dict (empty at first) is filled with the step, optimizer moments and batch generator reached; passed
    back with the same model, the next call continues exactly where this one stopped.
    """
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    if init is not None:
        model = init.train()
    else:
        model = GPT2(cfg.model_config())
        model.reset_parameters(generator=torch.Generator().manual_seed(cfg.seed))
    optimizer = make_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    first = 0
    if resume:  # continue a run cut into pieces: the same batches, schedule and optimizer state as one run
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        first = resume["step"]
    last = cfg.max_steps if stop_step is None else min(stop_step, cfg.max_steps)
    types = torch.unique(train_ids.long())  # (K,) the token ids that occur in the training text
    remap = torch.full((model.config.vocab_size,), -1, dtype=torch.long)
    remap[types] = torch.arange(len(types))  # token id -> its index among `types`
    full_head = model.lm_head
    history = {"step": [], "train_loss": [], "eval_step": [], "eval_loss": [], "restricted_vocab": len(types)}
    start = time.perf_counter()
    bar = tqdm(range(first, last), disable=not progress, desc="training")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, cfg)
        x, y = get_batch(train_ids, cfg, generator)
        restricted = step < cfg.restricted_steps
        model.lm_head = RestrictedHead(full_head, types) if restricted else full_head
        logits = model(x)  # (B, T, K) restricted, else (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), (remap[y] if restricted else y).flatten())
        model.lm_head = full_head
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        history["step"].append(step)
        history["train_loss"].append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps:
            model.eval()
            n = len(heldout_ids) if step + 1 == cfg.max_steps else min(cfg.eval_tokens, len(heldout_ids))
            ppl = perplexity(model, heldout_ids[:n], context=cfg.context)
            model.train()
            history["eval_step"].append(step + 1)
            history["eval_loss"].append(math.log(ppl))
    history["wall_s"] = time.perf_counter() - start
    history["tokens_seen"] = (last - first) * cfg.batch_size * cfg.context
    if resume is not None:
        resume.update(step=last, optimizer=optimizer.state_dict(), generator=generator.get_state())
    history["train_tokens"] = len(train_ids)
    history["heldout_tokens"] = len(heldout_ids)
    history["epochs"] = history["tokens_seen"] / len(train_ids)
    return model.eval(), history


def main(argv: list[str] | None = None) -> None:
    from . import checkpoint, corpus

    parser = argparse.ArgumentParser(prog="python -m kvlib.shakespeare.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for the checkpoint, model card and loss curve")
    parser.add_argument("--data", default=".shakespeare-data", help="where the corpus is fetched and unpacked")
    parser.add_argument("--max-steps", type=int, default=TrainConfig.max_steps)
    parser.add_argument("--restricted-steps", type=int, default=TrainConfig.restricted_steps)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--min-lr", type=float, default=TrainConfig.min_lr)
    parser.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps)
    parser.add_argument("--init-from", default=None,
                        help="continue from the weights of a checkpoint this command wrote (a second phase)")
    parser.add_argument("--write-package-data", action="store_true",
                        help="also rewrite kvlib/data's held-out ids and word list")
    args = parser.parse_args(argv)
    cfg = TrainConfig(max_steps=args.max_steps, restricted_steps=args.restricted_steps, lr=args.lr,
                      min_lr=args.min_lr, warmup_steps=args.warmup_steps)
    init, earlier = None, []
    if args.init_from:
        init = checkpoint.load(args.init_from)
        previous = json.loads((Path(args.init_from) / checkpoint.HISTORY_NAME).read_text())
        earlier = previous.get("phases", []) + [_phase_summary(previous)]
    works = corpus.read_works(corpus.download_texts(args.data))
    train_text, heldout_text = corpus.split_works(works)
    tokenizer = corpus.tokenizer()
    train_ids = torch.tensor(tokenizer.encode(train_text), dtype=torch.int32)
    heldout = tokenizer.encode(heldout_text)
    if args.write_package_data:
        corpus.write_package_data(works, heldout)
    heldout_ids = torch.tensor(heldout, dtype=torch.long)
    print(f"corpus: {len(works)} works; {len(train_ids):,} training tokens, {len(heldout_ids):,} held-out tokens "
          f"({', '.join(corpus.HELDOUT_WORKS)}); {torch.get_num_threads()} threads")
    model, history = train(train_ids, heldout_ids, cfg, init=init)
    history["unigram_ppl"] = checkpoint.unigram_perplexity(train_ids, heldout_ids, model.config.vocab_size)
    history["train_ppl"] = perplexity(model, train_ids[: len(heldout_ids)].long(), context=cfg.context)
    history["heldout_ppl"] = math.exp(history["eval_loss"][-1])
    history["train_config"] = asdict(cfg)
    history["phases"] = earlier  # the runs this one continued, oldest first
    history["init_from"] = args.init_from
    history["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    checkpoint.save(model, args.out, history)
    print(f"held-out perplexity {history['heldout_ppl']:.1f} (unigram baseline {history['unigram_ppl']:.1f}); "
          f"wrote {args.out}")


def _phase_summary(history: dict) -> dict:
    """What the model card says of an earlier phase: its settings, cost and scores (not its per-step curve)."""
    keep = ("train_config", "step", "train_loss", "tokens_seen", "wall_s", "eval_step", "eval_loss", "heldout_ppl",
            "restricted_vocab", "machine", "init_from")
    return {k: history[k] for k in keep if k in history}


if __name__ == "__main__":
    main()
