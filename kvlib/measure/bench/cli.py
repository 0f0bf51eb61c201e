"""The command line of `python -m kvlib.measure.bench`."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import torch

from ...config import ATTN_IMPLEMENTATIONS, GPT2_SIZES, GPT2Config
from ...model.loading import random_gpt2
from .results import report, write_results
from .runner import FULL_GPU, QUICK, TINY, Settings, run


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serving"]:  # python -m kvlib.measure.bench serving ...: continuous batching vs static, paged memory
        from .serving import main as serving_main

        return serving_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m kvlib.measure.bench",
                                description=sys.modules[__package__].__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--model", default="gpt2", choices=(*GPT2_SIZES, "tiny"),
                   help="the shapes timed, with seeded random weights (tiny: a 2-layer model for tests)")
    p.add_argument("--attn-implementation", default="sdpa", choices=ATTN_IMPLEMENTATIONS,
                   help="kvlib's attention (default sdpa, the fused fast path, as transformers' GPT-2 uses; "
                        "eager: the explicit matmuls the notebooks read)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="dtype of the weights and caches in the headline and sweeps (default float32; on a GPU "
                        "float16 is what serving uses)")
    p.add_argument("--out", help="also run the sweeps and write results and figures to this directory")
    p.add_argument("--headline-only", action="store_true",
                   help="with --out: write the headline's results and figure without running the sweeps")
    p.add_argument("--quick", action="store_true", help="small sweeps: about a minute for GPT-2 small on a CPU")
    p.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="time torch.compile of the fixed-shape decode step (auto: on a GPU only)")
    p.add_argument("--repeats", type=int, help="timed repeats per configuration (default 3, quick 2)")
    p.add_argument("--new-tokens", type=int, help="headline: new tokens per generation (default 128, quick 16)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars on stderr")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no GPU")
    s = Settings(**(FULL_GPU if device.type == "cuda" and not args.quick else {}), **(QUICK if args.quick else {}))
    if device.type == "cuda" and args.quick:
        s = replace(s, dtypes=("float32", "bfloat16"))
    s = replace(s, **{k: v for k, v in (("repeats", args.repeats), ("new_tokens", args.new_tokens)) if v})
    config = GPT2Config(**TINY) if args.model == "tiny" else GPT2Config.from_name(args.model)
    config = replace(config, attn_implementation=args.attn_implementation)
    model = random_gpt2(config).to(device=device, dtype=getattr(torch, args.dtype))
    use_compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    compile_mode = ("reduce-overhead" if device.type == "cuda" else "default") if use_compile else None
    result = run(model, s, sweeps=args.out is not None and not args.headline_only, compile_mode=compile_mode,
                 progress=not args.no_progress)
    print(report(result))
    if args.out:
        for path in write_results(result, args.out, quick=args.quick):
            print(f"wrote {path}")
    return result
