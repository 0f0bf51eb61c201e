"""Uptrain a converted Shakespeare GPT-2: `python -m kvlib.shakespeare.uptrain --kind gqa --n-kv-head 1`.

GQA (Ainslie et al. 2023) converts a multi-head checkpoint by mean-pooling each group's K/V heads, then continues
pre-training it briefly ("uptraining": 5% of the original steps in the paper) to win back what pooling lost. This
command does it to the shipped Shakespeare model with kvlib.shakespeare.train's loop, and, at the same budget and on
the same batches (same seed), two comparisons: `--kind mla` fine-tunes the latent-attention conversion
(kvlib.model.mla), `--kind mha` trains the unconverted model (the control: what extra training does to a model
that lost nothing). Settings default to the schedule of the shipped model's last phase (lr 1e-3 → 1e-4).

A run is cut into pieces with --until STEP (e.g. to stay within a time limit) and continued with --resume: the
optimizer moments and the batch generator are saved with the weights, so the pieces equal one run. Everything is
written under --out (default .shakespeare-data/uptrain/<name>/, ignored by git): state.pt (weights, fp32, and
the training state) and uptrain.json (settings, loss curve, cost, held-out perplexity).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..model import gqa, mla
from ..model.gpt2 import GPT2
from .evaluate import perplexity
from .train import TrainConfig, train

KINDS = ("mha", "gqa", "mla")
STATE_NAME, INFO_NAME = "state.pt", "uptrain.json"
DEFAULTS = TrainConfig(max_steps=200, restricted_steps=0, lr=1e-3, min_lr=1e-4, warmup_steps=10, eval_every=10**9)


def run_name(kind: str, n_kv_head: int = 1, kv_lora_rank: int = 32) -> str:
    """"mha", "gqa1" (n_kv_head = 1: MQA) or "mla32" (kv_lora_rank = 32)."""
    return {"mha": "mha", "gqa": f"gqa{n_kv_head}", "mla": f"mla{kv_lora_rank}"}[kind]


def convert(model: GPT2, kind: str, n_kv_head: int = 1, kv_lora_rank: int = 32) -> GPT2:
    """The model to uptrain: a copy of `model` as it is (mha), mean-pooled to n_kv_head K/V heads (gqa), or
    converted to latent attention of rank kv_lora_rank (mla)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "gqa":
        return gqa.mean_pool_kv_heads(model, n_kv_head)
    if kind == "mla":
        return mla.to_latent_attention(model, kv_lora_rank)
    return gqa.mean_pool_kv_heads(model, model.config.n_kv_head)  # an independent copy, unchanged


def training_ids(data_dir: str | Path) -> torch.Tensor:
    """The training works as 1-D int32 GPT-2 token ids, tokenized once and kept in data_dir."""
    from . import corpus

    cached = Path(data_dir) / "train_ids.pt"
    if cached.exists():
        return torch.load(cached, weights_only=True)
    train_text, _ = corpus.split_works(corpus.read_works(corpus.download_texts(data_dir)))
    ids = torch.tensor(corpus.tokenizer().encode(train_text), dtype=torch.int32)
    torch.save(ids, cached)
    return ids


def load(out: str | Path) -> tuple[GPT2, dict]:
    """The uptrained model written under `out` (rebuilt from the shipped model by the same conversion) and its info."""
    from ..model.loading import load_gpt2

    out = Path(out)
    info = json.loads((out / INFO_NAME).read_text())
    base, _ = load_gpt2("shakespeare")
    model = convert(base, info["kind"], info["n_kv_head"], info["kv_lora_rank"])
    model.load_state_dict(torch.load(out / STATE_NAME, weights_only=True)["model"])
    model.weights_source = f"{base.weights_source}, {info['name']} uptrained {info['steps_done']} steps"
    return model.eval(), info


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m kvlib.shakespeare.uptrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--n-kv-head", type=int, default=1, help="K/V heads after mean-pooling (--kind gqa; 1 = MQA)")
    p.add_argument("--kv-lora-rank", type=int, default=32, help="latent width (--kind mla)")
    p.add_argument("--steps", type=int, default=DEFAULTS.max_steps, help="steps of the whole run (its schedule)")
    p.add_argument("--until", type=int, default=None, help="stop this piece at this step (continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run stored in --out")
    p.add_argument("--out", default=None, help="default .shakespeare-data/uptrain/<name>")
    p.add_argument("--data", default=".shakespeare-data", help="where the corpus is fetched, unpacked, tokenized")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = run_name(args.kind, args.n_kv_head, args.kv_lora_rank)
    out = Path(args.out or Path(args.data) / "uptrain" / name)
    cfg = TrainConfig(**{**asdict(DEFAULTS), "max_steps": args.steps})
    spec = {"name": name, "kind": args.kind, "n_kv_head": args.n_kv_head, "kv_lora_rank": args.kv_lora_rank,
            "train_config": asdict(cfg)}
    info, resume, model = _start_or_resume(out, spec, args.resume)
    train_ids, heldout_ids = training_ids(args.data), _heldout()  # held out: the ids shipped in kvlib/data
    print(f"{name}: steps {resume.get('step', 0)} -> {min(args.until or cfg.max_steps, cfg.max_steps)} of "
          f"{cfg.max_steps}, {cfg.batch_size} x {cfg.context} tokens each; {torch.get_num_threads()} threads")
    model, history = train(train_ids, heldout_ids, cfg, progress=False, init=model, resume=resume,
                           stop_step=args.until)
    info["pieces"].append({"steps": history["step"], "train_loss": history["train_loss"],
                           "wall_s": history["wall_s"], "tokens_seen": history["tokens_seen"],
                           "machine": _machine(),
                           "date": time.strftime("%Y-%m-%d")})
    info["steps_done"] = resume["step"]
    if history["eval_loss"]:  # the run reached its last step: train() scored all held-out text
        info["heldout_ppl"] = math.exp(history["eval_loss"][-1])
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "resume": resume}, out / STATE_NAME)
    (out / INFO_NAME).write_text(json.dumps(info, indent=1) + "\n")
    done = f"held-out perplexity {info['heldout_ppl']:.2f}" if "heldout_ppl" in info else "continue with --resume"
    print(f"{name}: {info['steps_done']} of {cfg.max_steps} steps in "
          f"{sum(pc['wall_s'] for pc in info['pieces']) / 60:.1f} min; {done}; wrote {out}")
    return info


def _start_or_resume(out: Path, spec: dict, resume: bool) -> tuple[dict, dict, GPT2]:
    """(info, resume state, model): a fresh conversion of the shipped model, or the unfinished run stored in out."""
    from ..model.loading import load_gpt2

    if not resume:
        if (out / INFO_NAME).exists():
            raise ValueError(f"{out} already holds a run: pass --resume to continue it, or another --out")
        base, _ = load_gpt2("shakespeare")
        start = convert(base, spec["kind"], spec["n_kv_head"], spec["kv_lora_rank"])
        with torch.no_grad():  # what the conversion alone gives, the point uptraining starts from
            start_ppl = perplexity(start, _heldout(), context=base.config.n_positions)
        return {**spec, "start_heldout_ppl": start_ppl, "pieces": [], "steps_done": 0}, {}, start
    if not (out / INFO_NAME).exists():
        raise ValueError(f"--resume: {out} holds no run to continue")
    info = json.loads((out / INFO_NAME).read_text())
    if {k: info[k] for k in spec} != spec:
        raise ValueError(f"--resume: {out} holds a run with other settings ({info['name']}, "
                         f"{info['train_config']['max_steps']} steps); give the same --kind, ranks and --steps")
    if info["steps_done"] >= spec["train_config"]["max_steps"]:
        raise ValueError(f"--resume: the run in {out} is finished ({info['steps_done']} steps)")
    model, _ = load(out)
    state = torch.load(out / STATE_NAME, weights_only=True)["resume"]
    return info, state, model


def _machine() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), threads and torch version."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return f"CPU {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _heldout() -> torch.Tensor:
    from .corpus import heldout_ids

    return heldout_ids()


if __name__ == "__main__":
    main()
