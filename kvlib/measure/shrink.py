"""Measure what shrinking the KV cache costs in quality: `python -m kvlib.measure.shrink --out figures/`.

On the Shakespeare GPT-2 (kvlib.load_gpt2("shakespeare")) and its held-out works: perplexity after mean-pooling
K/V heads (GQA/MQA), with int8/int4 caches (keys per token or per channel, with and without a full-precision window;
logit error and greedy-token agreement against the fp32 cache), and against position for full attention, a sliding
window, and a window with attention sinks; and the attention weight the first token receives. Writes
<out>/shrink_cpu.json and the figures of notebook 08. Windows of n_positions tokens, non-overlapping.

Shapes: B windows, T = n_positions tokens per window, V vocabulary.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..model import gqa
from ..attention import causal_mask, sliding_window_mask
from ..cache.contiguous import DynamicKVCache
from ..model.gpt2 import GPT2, repeat_kv
from ..cache.quantized import QuantizedKVCache


def windows(ids: torch.Tensor, context: int, n: int | None = None) -> torch.Tensor:
    """The first n non-overlapping windows (B, context) of a 1-D id tensor (all whole windows when n is None)."""
    count = ids.numel() // context if n is None else min(n, ids.numel() // context)
    return ids[: count * context].view(count, context)  # (B, T)


@torch.inference_mode()
def window_nll(model: GPT2, x: torch.Tensor, mask: torch.Tensor | None = None,
               batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """NLL (B, T-1) of each next token of x (B, T), uncached, and the argmax prediction (B, T-1) at each position.

    mask: a (T, T) boolean attention mask (e.g. sliding_window_mask) or None for causal attention.
    """
    nll, top1 = [], []
    for chunk in x.split(batch_size):
        m = None if mask is None else mask[None, None]  # (1, 1, T, T)
        logits = model(chunk, attention_mask=m)[:, :-1]  # (b, T-1, V)
        nll.append(F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none"))  # (b, T-1)
        top1.append(logits.argmax(-1))
    return torch.cat(nll), torch.cat(top1)


def perplexity_of(nll: torch.Tensor) -> float:
    return math.exp(float(nll.double().mean()))


@torch.inference_mode()
def compare_decoding(model: GPT2, x: torch.Tensor, make_cache) -> dict[str, torch.Tensor]:
    """Teacher-forced decoding of x (B, T) one token at a time with make_cache(), against the uncached model.

    The uncached logits are the reference: an fp32 cache gives the same (tests/test_cache.py). Returns per position
    (B, T-1): nll_ref, nll (the cache's), logit_err (max |Δlogit| over the vocabulary) and agree (same argmax).
    """
    ref = model(x)  # (B, T, V)
    cache, got = make_cache(), []
    for t in range(x.shape[1] - 1):
        got.append(model(x[:, t:t + 1], cache)[:, -1])  # (B, V): predicts token t+1
    got = torch.stack(got, dim=1)  # (B, T-1, V)
    ref, target = ref[:, :-1], x[:, 1:]
    return {"nll_ref": F.cross_entropy(ref.transpose(1, 2), target, reduction="none"),
            "nll": F.cross_entropy(got.transpose(1, 2), target, reduction="none"),
            "logit_err": (got - ref).abs().amax(dim=-1), "agree": got.argmax(-1) == ref.argmax(-1)}


@torch.inference_mode()
def greedy(model: GPT2, prompt: torch.Tensor, n_new: int, cache) -> torch.Tensor:
    """Greedy continuation (B, n_new) of prompt (B, T_prompt) decoded with the given (empty) cache."""
    logits = model(prompt, cache)[:, -1]  # (B, V)
    tokens = []
    for _ in range(n_new):
        tokens.append(logits.argmax(-1))  # (B,)
        logits = model(tokens[-1][:, None], cache)[:, -1]
    return torch.stack(tokens, dim=1)


@torch.inference_mode()
def first_token_attention(model: GPT2, x: torch.Tensor, start: int = 16) -> list[float]:
    """Per layer: the mean softmax weight that queries at positions >= start give to key 0 (over heads, rows, windows).

    Recomputes each layer's attention weights from its input (captured by a hook) with the causal mask.
    """
    captured: dict[int, torch.Tensor] = {}
    hooks = [block.attn.register_forward_pre_hook(lambda m, args, i=i: captured.__setitem__(i, args[0]))
             for i, block in enumerate(model.transformer.h)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    c, (B, T) = model.config, x.shape
    weights = []
    for i, block in enumerate(model.transformer.h):
        kv = c.n_kv_head * c.head_dim
        q, k, _ = block.attn.c_attn(captured[i]).split([c.n_embd, kv, kv], dim=-1)
        q = q.view(B, T, c.n_head, c.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = repeat_kv(k.view(B, T, c.n_kv_head, c.head_dim).transpose(1, 2), c.n_kv_groups)  # (B, nh, T, hs)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(c.head_dim)  # (B, nh, T, T)
        probs = scores.masked_fill(~causal_mask(T, T), float("-inf")).softmax(-1)  # (B, nh, T, T)
        weights.append(float(probs[:, :, start:, 0].mean()))
    return weights


@torch.inference_mode()
def reconstruction_error(model: GPT2, x: torch.Tensor, make_cache) -> dict[str, float]:
    """Relative error ||K_held - K|| / ||K|| (and V) of a cache after a prefill of x (B, T), mean over layers."""
    exact, cache = DynamicKVCache(), make_cache()
    model(x, exact), model(x, cache)
    err = {"key": 0.0, "value": 0.0}
    for layer in range(model.config.n_layer):
        for name, held, true in zip(err, cache.dequantized(layer), (exact.key_cache[layer], exact.value_cache[layer])):
            err[name] += float((held - true).norm() / true.norm()) / model.config.n_layer
    return err


def sweep(model: GPT2, ids: torch.Tensor, *, n_windows: int, quant_windows: int, window: int, sinks: int,
          group_size: int, residual_length: int, log=print) -> dict:
    """Every measurement of notebook 08 on model and held-out ids; a JSON-ready dict."""
    c = model.config
    T = c.n_positions
    x = windows(ids, T, n_windows)  # (B, T)
    xq = x[:quant_windows]
    result: dict = {"context": T, "windows": int(x.shape[0]), "tokens_scored": int(x.shape[0] * (T - 1)),
                    "quant_windows": int(xq.shape[0]), "heldout_tokens": int(ids.numel())}
    tic = time.perf_counter()
    result["gqa"] = []
    _, top1_full = window_nll(model, x)
    for n_kv in reversed(gqa.allowed_n_kv_heads(c.n_head)):
        pooled = gqa.mean_pool_kv_heads(model, n_kv)
        nll, top1 = window_nll(pooled, x)
        ppl = perplexity_of(nll)
        result["gqa"].append({"n_kv_head": n_kv, "group": c.n_head // n_kv, "perplexity": ppl,
                              "top1_agreement": float((top1 == top1_full).float().mean()),
                              "window_nll": [float(v) for v in nll.double().mean(1)]})
        log(f"GQA n_kv_head={n_kv}: perplexity {ppl:.2f}")
    result["gqa_s"] = time.perf_counter() - tic

    tic = time.perf_counter()
    result["quant"] = []
    prompt = xq[:1, :32]
    generated = torch.cat([prompt, greedy(model, prompt, T - 32, DynamicKVCache())], dim=1)  # (1, T): fp32 greedy
    rows = torch.cat([xq, generated])  # held-out windows, then the model's own greedy text
    for nbits in (8, 4):
        for key_quant in ("token", "channel"):
            for residual in (0, residual_length):
                def make(nbits=nbits, key_quant=key_quant, residual=residual):
                    return QuantizedKVCache(c, nbits, key_quant=key_quant, value_quant="token", group_size=group_size,
                                            residual_length=residual)
                r = compare_decoding(model, rows, make)
                recon = reconstruction_error(model, xq, make)
                agree = r["agree"][-1]  # (T-1,): along the greedy generation
                row = {"nbits": nbits, "key_quant": key_quant, "value_quant": "token", "group_size": group_size,
                       "residual_length": residual, "perplexity": perplexity_of(r["nll"][:-1]),
                       "perplexity_fp32": perplexity_of(r["nll_ref"][:-1]),
                       "window_nll": [float(v) for v in r["nll"][:-1].double().mean(1)],
                       "logit_err_mean": float(r["logit_err"][:-1].mean()),
                       "logit_err_max": float(r["logit_err"][:-1].max()),
                       "top1_agreement": float(r["agree"][:-1].float().mean()),
                       "greedy_agreement": float(agree.float().mean()),
                       "greedy_first_divergence": int((~agree).nonzero()[0]) if not agree.all() else int(agree.numel()),
                       "key_rel_err": recon["key"], "value_rel_err": recon["value"]}
                result["quant"].append(row)
                log(f"int{nbits} keys per {key_quant}, residual {residual}: perplexity {row['perplexity']:.3f}, "
                    f"top-1 agreement {row['top1_agreement']:.4f}, greedy agreement {row['greedy_agreement']:.3f}")
    result["quant_s"] = time.perf_counter() - tic

    tic = time.perf_counter()
    masks = {"full": None, f"window {window}": sliding_window_mask(T, T, window),
             f"window {window - sinks} + {sinks} sinks": sliding_window_mask(T, T, window - sinks, sinks)}
    result["window"] = {"window": window, "sinks": sinks, "per_position_nll": {}, "perplexity": {},
                        "perplexity_beyond_window": {}, "window_nll": {}}
    for name, mask in masks.items():
        nll, top1 = window_nll(model, x, mask)  # (B, T-1): position t predicts token t+1
        result["window"]["per_position_nll"][name] = [float(v) for v in nll.double().mean(0)]
        result["window"]["perplexity"][name] = perplexity_of(nll)
        result["window"]["window_nll"][name] = [float(v) for v in nll.double().mean(1)]
        result["window"].setdefault("top1_agreement", {})[name] = float((top1 == top1_full).float().mean())
        result["window"]["perplexity_beyond_window"][name] = perplexity_of(nll[:, window:])
        log(f"{name}: perplexity {perplexity_of(nll):.3f} (positions >= {window}: {perplexity_of(nll[:, window:]):.3f})")
    result["first_token_attention"] = first_token_attention(model, x[:8])
    result["uniform_attention_to_first"] = float(torch.tensor([1 / (p + 1) for p in range(16, T)]).mean())
    result["window_s"] = time.perf_counter() - tic
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m kvlib.measure.shrink", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="directory for shrink_cpu.json and the figures")
    p.add_argument("--windows", type=int, default=64, help="held-out windows of n_positions tokens for perplexity")
    p.add_argument("--quant-windows", type=int, default=8, help="windows decoded token by token per quantized cache")
    p.add_argument("--window", type=int, default=64, help="sliding window (tokens kept, sinks included)")
    p.add_argument("--sinks", type=int, default=4)
    p.add_argument("--group-size", type=int, default=16)
    p.add_argument("--residual-length", type=int, default=64)
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
                   sinks=args.sinks, group_size=args.group_size, residual_length=args.residual_length)
    result["meta"] = {"model": model.weights_source, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "seconds": time.perf_counter() - tic, "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"done in {result['meta']['seconds']:.0f} s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "shrink_cpu.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
