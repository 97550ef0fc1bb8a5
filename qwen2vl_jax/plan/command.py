"""``qwen2vl-jax plan``: the arguments -> a train or serve plan -> the printed report.

    qwen2vl-jax plan RECIPE.yaml --topology v5p:4x4x4 [--mesh data=..,fsdp=..,tensor=..] [key=value ...]
    qwen2vl-jax plan --model {2b,7b,72b} --topology v5e-16 --mode {prefill,decode} --batch B --seq S
                     [--patches P] [--max-new-tokens N] [--mesh ...] [--dtype bfloat16]

The last line is ``per-chip total: X GiB of Y GiB HBM (fits)`` or ``(does not fit)``; both exit 0.
What cannot be planned (a bad topology, a mesh that does not divide the chips or cannot split a
dimension, a missing libtpu) is a ``ValueError``, which the CLI prints as one line (exit 2).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

SERVE_OPTIONS = ("mode", "batch", "seq", "patches", "max_new_tokens", "dtype")
OPTIONS = ("topology", "num_slices", "gpu", "gpus", "mesh", "model", *SERVE_OPTIONS)


def _options_last(args: Any) -> Any:
    """``plan RECIPE --topology T key=value``: argparse hands everything after the recipe to the
    overrides; parse again with the options first (every plan option takes one value)."""
    rest = list(args.overrides or [])
    if not any(t.startswith("-") for t in rest):
        return args
    argv = ["plan"]
    for name in OPTIONS:
        if getattr(args, name) is not None:
            argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    overrides, i = [], 0
    while i < len(rest):
        token = rest[i]
        if token.startswith("-"):
            argv.append(token)
            if "=" not in token and token not in ("-h", "--help") and i + 1 < len(rest):
                argv.append(rest[i + 1])
                i += 1
        else:
            overrides.append(token)
        i += 1
    from qwen2vl_jax.cli import build_parser

    return build_parser().parse_args(argv + ([args.recipe] if args.recipe is not None else []) + overrides)


def _estimate(args: Any) -> int:
    from qwen2vl_jax.plan import estimate

    gpus = args.gpus or 8
    if args.model is not None:
        if args.recipe is not None or args.overrides:
            raise ValueError("plan: give a recipe (training) or --model (inference), not both")
        est = estimate.estimate_serve(args.model, args.mode or "prefill", args.batch or 1, args.seq or 8192,
                                      args.patches or 0, args.dtype or "bfloat16", args.gpu, gpus, args.mesh,
                                      args.max_new_tokens or 128)
    else:
        if args.recipe is None:
            raise ValueError("plan: give a recipe or --model")
        from qwen2vl_jax.plan.train_plan import planning_model_config
        from qwen2vl_jax.train.run_config import load_run_config

        run = load_run_config(args.recipe, list(args.overrides))
        cfg, _ = planning_model_config(run)
        what = f"train {args.recipe}" + (f" {' '.join(args.overrides)}" if args.overrides else "")
        est = estimate.estimate_train(run, cfg, args.gpu, gpus, args.mesh if args.mesh is not None else run.runtime.mesh,
                                      what)
    for line in est.lines():
        print(line)
    return 0


def run(args: Any) -> int:
    import jax

    args = _options_last(args)
    if (args.topology is None) == (args.gpu is None):
        raise ValueError("plan: give --topology (a TPU slice, e.g. v5e:4x4, v5p-128: compiled) or --gpu "
                         "(e.g. h100 with --gpus 8: estimated), one of them")
    if args.gpu is not None:
        return _estimate(args)

    if not os.environ.get("JAX_PLATFORMS"):
        jax.config.update("jax_platforms", "cpu")  # nothing runs: a TPU / GPU host backend is not needed

    from qwen2vl_jax.plan.topology import parse_topology

    topology = parse_topology(args.topology, args.num_slices or 1)
    if args.model is not None:
        if args.recipe is not None or args.overrides:
            raise ValueError("plan: give a recipe (training) or --model (inference), not both")
        from qwen2vl_jax.plan.serve_plan import plan_serve

        report = plan_serve(args.model, topology, args.mode or "prefill", args.batch or 1, args.seq or 8192,
                            patches=args.patches or 0, mesh_spec=args.mesh, dtype=args.dtype or "bfloat16",
                            max_new_tokens=args.max_new_tokens or 128)
    else:
        if args.recipe is None:
            raise ValueError("plan: give a recipe (e.g. experiments/configs/stage3_sft_7b.yaml) or --model")
        if "=" in args.recipe and not Path(args.recipe).exists():
            raise ValueError(f"plan: the first argument must be the recipe, got {args.recipe!r}")
        given = [f"--{k.replace('_', '-')}" for k in SERVE_OPTIONS if getattr(args, k) is not None]
        if given:
            raise ValueError(f"plan: {', '.join(given)} go with --model (inference); a recipe sets the training shapes")
        from qwen2vl_jax.plan.train_plan import plan_train

        report = plan_train(args.recipe, list(args.overrides), topology, args.mesh)
    for line in report.lines():
        print(line)
    sys.stdout.flush()
    return 0


__all__ = ["OPTIONS", "SERVE_OPTIONS", "run"]
