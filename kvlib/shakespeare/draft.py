"""Train notebook 09's draft model: `python -m kvlib.shakespeare.draft --out DIR`.

A GPT-2 of 2 layers, 2 heads of 16 and width 32, trained by kvlib.shakespeare.train's loop on the same Shakespeare
corpus with the same GPT-2 BPE as the shipped model, so that it can draft for it (a drafter must share the
target's tokenizer). It is a quarter as wide as the target and half as deep; its tied 50,257 x 32 embedding is
1.6 M of its 1.65 M parameters (3.2 MiB in fp16). Seeded; two locked runs of under ten minutes each on a 2-core CPU:

    python -m kvlib.shakespeare.draft --out /tmp/draft1                                    # 500 steps from scratch
    python -m kvlib.shakespeare.draft --out kvlib/data/shakespeare-draft --init-from /tmp/draft1 \\
        --max-steps 240 --restricted-steps 0 --lr 1e-3 --min-lr 1e-4 --warmup-steps 10    # 240 more, full softmax

The directory gets the fp16 weights and config.json (a transformers checkpoint too), training_history.json and a
model card with the held-out perplexity and the agreement of its greedy choice with the target's.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
from dataclasses import asdict
from pathlib import Path

import torch

from ..model.weights import SHAKESPEARE_DIR, load, save_weights
from .checkpoint import unigram_perplexity
from .evaluate import perplexity
from .train import TrainConfig, _phase_summary, train

DRAFT_SHAPE = dict(n_layer=2, n_head=2, n_embd=32)  # hs = 16, as in the target
HISTORY_NAME = "training_history.json"
CARD_NAME = "MODEL_CARD.md"


@torch.no_grad()
def top1_agreement(draft, target, ids: torch.Tensor, context: int = 512) -> float:
    """Share of positions of the 1-D ids where the two models' greedy next tokens agree, over 512-token windows.
    It is the acceptance rate of greedy speculative decoding on that text when the context is the text itself."""
    n = len(ids) // context * context
    windows = ids[:n].view(-1, context)  # (B, T)
    agree = total = 0
    for chunk in windows.split(1):  # one window at a time: (1, 512, 50257) logits are 100 MB
        same = draft(chunk).argmax(-1) == target(chunk).argmax(-1)  # (B, T)
        agree, total = agree + int(same.sum()), total + same.numel()
    return agree / total


def model_card(history: dict) -> str:
    runs = [*history["phases"], history]
    def softmax(steps: int) -> str:
        return (f"softmax over the training text's token types for the first {steps} steps, then all" if steps
                else "softmax over all 50,257 tokens")

    phases = "".join(
        f"| phase {i} | {r['train_config']['max_steps']} steps of {r['train_config']['batch_size']} x "
        f"{r['train_config']['context']} tokens, lr {r['train_config']['lr']} -> {r['train_config']['min_lr']}, "
        f"{softmax(r['train_config']['restricted_steps'])}{', from phase ' + str(i - 1) if i > 1 else ''}; "
        f"{r['wall_s'] / 60:.1f} min; held-out perplexity after it {math.exp(r['eval_loss'][-1]):.1f} |\n"
        for i, r in enumerate(runs, 1))
    c = history["shape"]
    return f"""# kvlib's Shakespeare draft model (notebook 09)

A small GPT-2 trained by `python -m kvlib.shakespeare.draft` on the same Shakespeare works and with the same GPT-2 BPE
as `kvlib/data/shakespeare-gpt2`, so that it can propose tokens for that model in speculative decoding.

| | |
|---|---|
| architecture | kvlib's GPT-2: {c['n_layer']} layers, {c['n_head']} heads of {c['n_embd'] // c['n_head']}, \
width {c['n_embd']}, tied head, {c['n_positions']} positions |
| parameters | {history['n_params']:,} ({history['n_params'] * 2 / 2**20:.1f} MiB in fp16 safetensors) |
{phases}| machine | {history['machine']} |

| held-out works ({history['heldout_tokens']:,} tokens) | this model | the target (shakespeare-gpt2) |
|---|---|---|
| perplexity (512-token windows) | {history['heldout_ppl']:.1f} | {history['target_heldout_ppl']:.1f} |
| greedy next token equal to the target's | {history['top1_agreement']:.3f} | 1 |

Unigram baseline on the same text: perplexity {history['unigram_ppl']:.1f}.
"""


def main(argv: list[str] | None = None) -> None:
    from . import corpus

    parser = argparse.ArgumentParser(prog="python -m kvlib.shakespeare.draft", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for the checkpoint and its model card")
    parser.add_argument("--data", default=".shakespeare-data", help="where the corpus is fetched and unpacked")
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--restricted-steps", type=int, default=440)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--min-lr", type=float, default=3e-4)
    parser.add_argument("--warmup-steps", type=int, default=40)
    parser.add_argument("--init-from", default=None, help="continue from a checkpoint this command wrote")
    args = parser.parse_args(argv)
    cfg = TrainConfig(**DRAFT_SHAPE, max_steps=args.max_steps, restricted_steps=args.restricted_steps, lr=args.lr,
                      min_lr=args.min_lr, warmup_steps=args.warmup_steps)
    init, earlier = None, []
    if args.init_from:
        init = load(args.init_from)
        previous = json.loads((Path(args.init_from) / HISTORY_NAME).read_text())
        earlier = previous["phases"] + [_phase_summary(previous)]
    works = corpus.read_works(corpus.download_texts(args.data))
    train_text, heldout_text = corpus.split_works(works)
    tokenizer = corpus.tokenizer()
    train_ids = torch.tensor(tokenizer.encode(train_text), dtype=torch.int32)
    heldout_ids = torch.tensor(tokenizer.encode(heldout_text), dtype=torch.long)
    model, history = train(train_ids, heldout_ids, cfg, init=init)
    target = load(SHAKESPEARE_DIR)
    history.update(
        phases=earlier, init_from=args.init_from, train_config=asdict(cfg), shape=asdict(model.config),
        n_params=sum(p.numel() for p in model.parameters()), heldout_ppl=math.exp(history["eval_loss"][-1]),
        target_heldout_ppl=perplexity(target, heldout_ids, context=cfg.context),
        unigram_ppl=unigram_perplexity(train_ids, heldout_ids, model.config.vocab_size),
        top1_agreement=top1_agreement(model, target, heldout_ids, cfg.context),
        machine=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                f"torch {torch.__version__}")
    save_weights(model, args.out)
    out = Path(args.out)
    (out / HISTORY_NAME).write_text(json.dumps(history, indent=1) + "\n")
    (out / CARD_NAME).write_text(model_card(history))
    print(f"held-out perplexity {history['heldout_ppl']:.1f} (target {history['target_heldout_ppl']:.1f}); greedy "
          f"agreement with the target {history['top1_agreement']:.3f}; wrote {args.out}")


if __name__ == "__main__":
    main()
