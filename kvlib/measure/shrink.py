"""Measure what shrinking the KV cache costs in quality: `python -m kvlib.measure.shrink --out figures/`.

On the Shakespeare GPT-2 (kvlib.load_gpt2("shakespeare")) and windows of its held-out works, every method scored
against the unchanged model on the same windows (paired per-window differences with standard errors,
kvlib.measure.quality): mean-pooled GQA/MQA; latent attention (kvlib.model.mla) at several ranks; int8/int4
caches decoded token by token (keys per token or per channel, with and without a full-precision window); a
sliding window with and without attention sinks, and the attention weight the first token receives; and uptrained
models written by `python -m kvlib.shakespeare.uptrain` (--uptrained DIR ...). Writes <out>/shrink_cpu.json.

Windows of n_positions tokens, non-overlapping, spread evenly over the held-out text (all three works).
Shapes: B windows, T = n_positions tokens per window, V vocabulary.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..attention import sliding_window_mask
from ..cache.quantized import QuantizedKVCache
from ..model import gqa, mla
from ..model.gpt2 import GPT2
from .figures import device_label
from .quality import (compare_decoding, first_token_attention, paired_difference, per_window, perplexity_of,
                      reconstruction_error, spread, window_nll, windows)

__all__ = ["sweep", "windows", "spread", "window_nll", "perplexity_of", "paired_difference", "MLA_RANKS"]

MLA_RANKS = (128, 64, 32, 16, 8, 4)


def score(model: GPT2, x: torch.Tensor, reference: dict, mask: torch.Tensor | None = None) -> dict:
    """Perplexity, per-window NLL, top-1 agreement with the reference model and the paired difference from it."""
    nll, top1 = window_nll(model, x, mask)
    rows = per_window(nll)
    return {"perplexity": perplexity_of(nll), "window_nll": rows,
            "top1_agreement": float((top1 == reference["top1"]).float().mean()),
            "paired": paired_difference(reference["window_nll"], rows)}


def _fmt(row: dict) -> str:
    p = row["paired"]
    return f"perplexity {row['perplexity']:.2f}, ×{p['ratio']:.4f} (ΔNLL {p['mean']:+.4f} ± {p['se']:.4f})"


def quant_rows(model: GPT2, xq: torch.Tensor, group_size: int, residual_length: int, log=print) -> list[dict]:
    """int8/int4, keys per token/channel, residual 0/residual_length: each decoded over xq token by token."""
    c, rows = model.config, []
    for nbits in (8, 4):
        for key_quant in ("token", "channel"):
            for residual in (0, residual_length):
                def make(nbits=nbits, key_quant=key_quant, residual=residual):
                    return QuantizedKVCache(c, nbits, key_quant=key_quant, value_quant="token", group_size=group_size,
                                            residual_length=residual)
                r = compare_decoding(model, xq, make)
                recon = reconstruction_error(model, xq, make)
                ref, got = per_window(r["nll_ref"]), per_window(r["nll"])
                row = {"nbits": nbits, "key_quant": key_quant, "value_quant": "token", "group_size": group_size,
                       "residual_length": residual, "perplexity": perplexity_of(r["nll"]),
                       "perplexity_fp32": perplexity_of(r["nll_ref"]), "window_nll": got, "window_nll_fp32": ref,
                       "paired": paired_difference(ref, got), "logit_err_mean": float(r["logit_err"].mean()),
                       "logit_err_max": float(r["logit_err"].max()),
                       "top1_agreement": float(r["agree"].float().mean()),
                       "key_rel_err": recon["key"], "value_rel_err": recon["value"]}
                rows.append(row)
                log(f"int{nbits} keys per {key_quant}, residual {residual}: {_fmt(row)}, "
                    f"top-1 {row['top1_agreement']:.4f}")
    return rows


def window_section(model: GPT2, x: torch.Tensor, reference: dict, window: int, sinks: int, log=print) -> dict:
    """Per-position NLL for full attention, a window of `window` tokens, and window - sinks recent + sinks sinks."""
    T = x.shape[1]
    masks = {f"window {window}": sliding_window_mask(T, T, window),
             f"window {window - sinks} + {sinks} sinks": sliding_window_mask(T, T, window - sinks, sinks)}
    out = {"window": window, "sinks": sinks, "per_position_nll": {"full": reference["per_position_nll"]}, "rows": {}}
    for name, mask in masks.items():
        nll, top1 = window_nll(model, x, mask)  # (B, T-1): position t predicts token t+1
        row = {"perplexity": perplexity_of(nll), "window_nll": per_window(nll),
               "top1_agreement": float((top1 == reference["top1"]).float().mean()),
               "perplexity_beyond_window": perplexity_of(nll[:, window:]),
               "paired": paired_difference(reference["window_nll"], per_window(nll))}
        out["rows"][name] = row
        out["per_position_nll"][name] = [float(v) for v in nll.double().mean(0)]
        log(f"{name}: {_fmt(row)}")
    names = list(masks)
    out["sinks_vs_window"] = paired_difference(out["rows"][names[0]]["window_nll"], out["rows"][names[1]]["window_nll"])
    return out


def uptrained_rows(dirs: list[str], x: torch.Tensor, reference: dict, log=print) -> list[dict]:
    """Each uptrained run (kvlib.shakespeare.uptrain's --out) scored on x, with its training budget."""
    from ..shakespeare import uptrain

    rows = []
    for d in dirs:
        model, info = uptrain.load(d)
        if info["steps_done"] < info["train_config"]["max_steps"]:
            raise ValueError(f"{d}: the run stopped at step {info['steps_done']} of {info['train_config']['max_steps']}"
                             "; finish it with --resume before scoring it")
        row = {k: info[k] for k in ("name", "kind", "n_kv_head", "kv_lora_rank", "train_config", "steps_done",
                                    "heldout_ppl", "start_heldout_ppl")}
        gqa_label = "MQA" if info["n_kv_head"] == 1 else f"GQA, {info['n_kv_head']} K/V heads"
        mla_label = f"MLA, r = {info['kv_lora_rank']}"
        row["label"] = {"mha": "MHA (control)", "gqa": gqa_label, "mla": mla_label}[info["kind"]]
        row.update(score(model, x, reference))
        row["train_loss"] = [v for piece in info["pieces"] for v in piece["train_loss"]]
        row["budget"] = {"steps": info["steps_done"], "tokens": sum(pc["tokens_seen"] for pc in info["pieces"]),
                         "minutes": sum(pc["wall_s"] for pc in info["pieces"]) / 60, "pieces": len(info["pieces"]),
                         "machine": info["pieces"][-1]["machine"], "date": info["pieces"][-1]["date"]}
        rows.append(row)
        log(f"uptrained {info['name']}: {_fmt(row)}")
    return rows


def sweep(model: GPT2, ids: torch.Tensor, *, n_windows: int, quant_windows: int, window: int, sinks: int,
          group_size: int, residual_length: int, mla_ranks=MLA_RANKS, uptrained=(), log=print) -> dict:
    """Every measurement of notebook 08 on model and held-out ids; a JSON-ready dict."""
    c, T = model.config, model.config.n_positions
    every = windows(ids, T)  # (all, T): every whole window of the held-out text
    index = spread(every.shape[0], n_windows)
    x = every[index]  # (B, T)
    q_index = [index[i] for i in spread(len(index), quant_windows)]
    result: dict = {"context": T, "windows": len(index), "window_index": index, "quant_window_index": q_index,
                    "whole_windows": int(every.shape[0]), "tokens_scored": len(index) * (T - 1),
                    "heldout_tokens": int(ids.numel())}
    tic = time.perf_counter()
    nll, top1 = window_nll(model, x)
    reference = {"perplexity": perplexity_of(nll), "window_nll": per_window(nll), "top1": top1,
                 "per_position_nll": [float(v) for v in nll.double().mean(0)]}
    result["reference"] = {k: v for k, v in reference.items() if k != "top1"}
    log(f"reference (MHA): perplexity {reference['perplexity']:.2f} on {len(index)} windows")
    result["gqa"] = []
    for n_kv in reversed(gqa.allowed_n_kv_heads(c.n_head)[:-1]):  # every K/V head count below n_head
        row = {"n_kv_head": n_kv, "group": c.n_head // n_kv, **score(gqa.mean_pool_kv_heads(model, n_kv), x, reference)}
        result["gqa"].append(row)
        log(f"GQA n_kv_head={n_kv}: {_fmt(row)}")
    result["mla"] = []
    for rank in mla_ranks:
        row = {"kv_lora_rank": rank, **score(mla.to_latent_attention(model, rank), x, reference)}
        result["mla"].append(row)
        log(f"MLA kv_lora_rank={rank}: {_fmt(row)}")
    result["perplexity_s"] = time.perf_counter() - tic

    tic = time.perf_counter()
    result["quant"] = quant_rows(model, every[q_index], group_size, residual_length, log)
    result["quant_s"] = time.perf_counter() - tic

    tic = time.perf_counter()
    result["window"] = window_section(model, x, reference, window, sinks, log)
    result["first_token_attention"] = first_token_attention(model, x[:8])
    result["uptrained"] = uptrained_rows(list(uptrained), x, reference, log)
    result["window_s"] = time.perf_counter() - tic
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m kvlib.measure.shrink", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="directory for shrink_cpu.json")
    p.add_argument("--windows", type=int, default=64, help="held-out windows of n_positions tokens (spread evenly)")
    p.add_argument("--quant-windows", type=int, default=8,
                   help="of those, the windows decoded token by token per quantized cache")
    p.add_argument("--window", type=int, default=64, help="sliding window (tokens kept, sinks included)")
    p.add_argument("--sinks", type=int, default=4)
    p.add_argument("--group-size", type=int, default=16)
    p.add_argument("--residual-length", type=int, default=64)
    p.add_argument("--mla-ranks", type=int, nargs="*", default=list(MLA_RANKS))
    p.add_argument("--uptrained", nargs="*", default=[], help="run directories of python -m kvlib.shakespeare.uptrain")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: this model's ops are tiny, and a second thread mostly waits)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from ..model.loading import load_gpt2
    from ..shakespeare.corpus import heldout_ids

    torch.manual_seed(0)
    model, _ = load_gpt2("shakespeare")
    tic = time.perf_counter()
    result = sweep(model, heldout_ids(), n_windows=args.windows, quant_windows=args.quant_windows, window=args.window,
                   sinks=args.sinks, group_size=args.group_size, residual_length=args.residual_length,
                   mla_ranks=args.mla_ranks, uptrained=args.uptrained)
    result["meta"] = {"model": model.weights_source, "machine": device_label(), "torch": torch.__version__,
                      "threads": torch.get_num_threads(),
                      "seconds": time.perf_counter() - tic, "date": time.strftime("%Y-%m-%d"),
                      "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"done in {result['meta']['seconds']:.0f} s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "shrink_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
