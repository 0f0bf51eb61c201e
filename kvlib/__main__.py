"""Command line: `python -m kvlib generate --prompt "Lionel Messi is a" --max-new-tokens 40 [--no-cache]`."""
from __future__ import annotations

import argparse
import sys
import time

import torch

from .config import GPT2_SIZES
from .model.generation import CACHE_KINDS, generate
from .model.loading import load_gpt2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kvlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="stream a GPT-2 continuation and report tokens/s")
    gen.add_argument("--prompt", required=True, help="text to continue")
    gen.add_argument("--max-new-tokens", type=int, default=40, help="at most this many new tokens (default 40)")
    gen.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step")
    gen.add_argument("--cache", choices=CACHE_KINDS, default="dynamic", help="KV-cache kind (default dynamic)")
    gen.add_argument("--model", default="gpt2", help=f"shakespeare (ships with kvlib), one of {', '.join(GPT2_SIZES)} "
                     "(real GPT-2 weights), or a local checkpoint directory (default gpt2)")
    gen.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    gen.add_argument("--seed", type=int, default=0, help="seed for sampling (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise SystemExit(f"error: --device {args.device!r} is not a device name: use cpu, cuda or cuda:N ({e})")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda was asked for, but this PyTorch build sees no CUDA GPU; use --device cpu")
    try:
        model, tokenizer = load_gpt2(args.model, device=device)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: {e}")
    input_ids = torch.tensor([tokenizer.encode(args.prompt)], device=device)
    if input_ids.numel() == 0:
        raise SystemExit("error: --prompt is empty; give some text to continue")
    generated: list[int] = []
    printed = ""

    def stream(token: torch.Tensor) -> None:
        nonlocal printed
        generated.append(int(token[0]))
        text = tokenizer.decode(generated)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            print(text[len(printed):], end="", flush=True)
            printed = text

    print(args.prompt, end="", flush=True)
    start = time.perf_counter()
    try:
        generate(
            model, input_ids, args.max_new_tokens, use_cache=not args.no_cache, cache=args.cache,
            eos_token_id=tokenizer.eos_token_id, temperature=args.temperature, top_k=args.top_k,
            generator=torch.Generator(device=device).manual_seed(args.seed), on_token=stream,
        )
    except (ValueError, TypeError) as e:
        raise SystemExit(f"\nerror: {e}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    mode = "no cache" if args.no_cache else f"{args.cache} cache"
    print(f"\n[{len(generated)} tokens in {seconds:.2f} s: {len(generated) / seconds:.1f} tokens/s, {mode}, "
          f"{device.type}; weights: {model.weights_source}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
