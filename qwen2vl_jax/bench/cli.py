"""The benchmark's arguments and dispatch (``tools/bench_inference.py``, ``qwen2vl_jax bench``).

Building the parser imports neither torch nor transformers (``qwen2vl_jax.cli`` builds it for
every command); the two modes are imported when they run.
"""

from __future__ import annotations

import argparse
import json
import sys

from qwen2vl_jax.bench.inputs import CONFIGS, LAYOUTS
from qwen2vl_jax.perf.devices import SPECS

DESCRIPTION = "Inference benchmark: ours versus transformers on CPU, or ours alone on a GPU."


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The benchmark's arguments (pass a parser, e.g. a CLI subparser, to add them to it)."""
    p = parser or argparse.ArgumentParser(prog="bench_inference", description=DESCRIPTION)
    p.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median; default 5)")
    p.add_argument("--new-tokens", type=int, default=None,
                   help="tokens generated per row (default 32; --sweep: 64)")
    p.add_argument("--config", choices=sorted(CONFIGS), default=None,
                   help="CPU comparison model: mid (~59M parameters, default), mid6 (--sweep's default) "
                        "or tiny (tests)")
    p.add_argument("--sweep", action="store_true",
                   help="ours vs transformers over the grid (batch 1/4 x vision none/1 image of 256, 1024, "
                        "4096 patches/4 images/16-frame video x text 32/512/2048): forward, prefill, decode, "
                        "generate per point, ratios, programs per bucket ladder")
    p.add_argument("--points", default=None,
                   help="--sweep: comma-separated point names or patterns, e.g. 'b1-img1024-t32,b4-*-t512' "
                        "(default: all 36)")
    p.add_argument("--ladder", choices=("fine", "pow2"), default="fine",
                   help="--sweep: our bucket ladder (fine: the default BucketConfig; pow2: powers of two)")
    p.add_argument("--png", metavar="PATH", default=None,
                   help="--sweep: write the log-log plot of prefill time against image tokens")
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8],
                   help="comma-separated, from {1, 8} (default 1,8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu", action="store_true",
                   help="our model alone at --preset size in bf16 (no transformers): decode tok/s and "
                        "the fraction of the HBM roofline")
    p.add_argument("--preset", default="2b", help="--gpu: model preset (2b, 7b, 72b, tiny; default 2b)")
    p.add_argument("--gpu-batch", type=int, default=1, help="--gpu: batch size (default 1)")
    p.add_argument("--hbm-gbps", type=float, default=None,
                   help=f"--gpu: HBM bandwidth in GB/s (default: detected, H100 SXM "
                        f"{SPECS['h100'].hbm_gbps:.0f}, H200 {SPECS['h200'].hbm_gbps:.0f})")
    p.add_argument("--allow-cpu", action="store_true", help="--gpu: run even if jax has no GPU (tests)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    if args.runs < 1 or (args.new_tokens is not None and args.new_tokens < 1):
        raise ValueError("--runs and --new-tokens must be >= 1")
    if args.sweep:
        from qwen2vl_jax.bench.sweep import run_sweep

        args.config = args.config or "mid6"
        result = run_sweep(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0
    args.new_tokens = args.new_tokens or 32
    args.config = args.config or "mid"
    if args.gpu:
        from qwen2vl_jax.bench.gpu_roofline import run_gpu

        result = run_gpu(args)
    else:
        bad = [b for b in args.batch_sizes if b not in LAYOUTS]
        if bad:
            raise ValueError(f"--batch-sizes: no input layout for {bad}; choose from {sorted(LAYOUTS)}")
        from qwen2vl_jax.bench.cpu_vs_transformers import run_cpu_comparison

        result = run_cpu_comparison(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ValueError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
