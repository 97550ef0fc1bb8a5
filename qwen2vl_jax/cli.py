"""The ``qwen2vl-jax`` command line.

    qwen2vl-jax info --preset {2b,7b,72b,tiny} | --config DIR   config + exact parameter count
    qwen2vl-jax convert --hf DIR --out DIR [--dtype bfloat16]     HF safetensors -> Orbax
    qwen2vl-jax convert --orbax DIR --to-hf DIR [--dtype ...]     Orbax -> HF safetensors
    qwen2vl-jax demo [--workdir DIR]                              embedded end-to-end demo
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from qwen2vl_jax.config import ModelConfig, get_preset
    from qwen2vl_jax.model import abstract_model

    if args.config:
        cfg = ModelConfig.from_json_file(f"{args.config}/config.json")
        name = args.config
    else:
        cfg = get_preset(args.preset)
        name = f"preset {args.preset}"
    import jax
    from flax import nnx

    state = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))  # jax.eval_shape: no memory
    vision = sum(int(x.size) for x in jax.tree.leaves(state["visual"]))
    total = sum(int(x.size) for x in jax.tree.leaves(state))
    if args.json:
        print(json.dumps({"config": dataclasses.asdict(cfg), "parameters": total,
                          "vision_parameters": vision, "llm_parameters": total - vision}, indent=2))
        return 0
    print(f"# {name}")
    print(json.dumps(cfg.to_hf_dict(), indent=2))
    print(f"vision parameters: {vision:,}")
    print(f"llm parameters: {total - vision:,}")
    print(f"parameters: {total:,}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from qwen2vl_jax.convert import hf_to_orbax, orbax_to_hf

    if args.hf:
        if not args.out:
            raise ValueError("convert --hf DIR needs --out DIR (the Orbax checkpoint to write)")
        out = hf_to_orbax(args.hf, args.out, args.dtype)
    else:
        if not args.to_hf:
            raise ValueError("convert --orbax DIR needs --to-hf DIR (the HF directory to write)")
        out = orbax_to_hf(args.orbax, args.to_hf, args.dtype)
    print(f"wrote {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from qwen2vl_jax.demo import run

    return run(args.workdir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen2vl-jax", description="Qwen2-VL in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print a config and its exact parameter count (no memory used)")
    src = info.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", choices=["2b", "7b", "72b", "tiny"])
    src.add_argument("--config", metavar="DIR", help="a checkpoint directory with config.json")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)

    conv = sub.add_parser("convert", help="convert checkpoints between HF safetensors and Orbax")
    src = conv.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf", metavar="DIR", help="HF checkpoint directory to read")
    src.add_argument("--orbax", metavar="DIR", help="our Orbax checkpoint directory to read")
    conv.add_argument("--out", metavar="DIR", help="Orbax directory to write (with --hf)")
    conv.add_argument("--to-hf", metavar="DIR", help="HF directory to write (with --orbax)")
    conv.add_argument("--dtype", choices=["float32", "bfloat16"],
                      help="dtype of the written weights (default: as stored)")
    conv.set_defaults(func=_cmd_convert)

    demo = sub.add_parser("demo", help="run the embedded end-to-end demo (no downloads)")
    demo.add_argument("--workdir", metavar="DIR", help="where to write the demo checkpoints (default: a temp dir)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"qwen2vl-jax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
