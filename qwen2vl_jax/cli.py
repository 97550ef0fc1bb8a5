"""The ``qwen2vl-jax`` command line.

    qwen2vl-jax info --preset {2b,7b,72b,tiny} | --config DIR   config + exact parameter count
    qwen2vl-jax convert --hf DIR --out DIR [--dtype bfloat16]     HF safetensors -> Orbax
    qwen2vl-jax convert --orbax DIR --to-hf DIR [--dtype ...]     Orbax -> HF safetensors
    qwen2vl-jax generate --model DIR [--image PATH ...] [--video PATH] --prompt TEXT [...]
    qwen2vl-jax bench [...]                                       inference benchmark
    qwen2vl-jax train RECIPE.yaml [key=value ...]                 train / fine-tune (resumes)
    qwen2vl-jax eval RECIPE.yaml [key=value ...] [--model DIR]    loss + exact match of answers
    qwen2vl-jax plot RUN_DIR [--out PNG]                          loss / throughput curves
    qwen2vl-jax plan RECIPE.yaml --topology v5p:4x4x4 [--mesh ...] memory per TPU chip (AOT compile)
    qwen2vl-jax plan --model 7b --topology v5e-8 --mode decode ... the same for prefill / decode
    qwen2vl-jax demo [key=value ...] [--workdir DIR]              learn to read on CPU (embedded)
    qwen2vl-jax demo --inference [--workdir DIR]                  the inference path, random weights
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
    from qwen2vl_jax.checkpoint.convert import hf_to_orbax, orbax_to_hf

    if args.hf:
        if not args.out:
            raise ValueError("convert --hf DIR needs --out DIR (the Orbax checkpoint to write)")
        out = hf_to_orbax(args.hf, args.out, args.dtype, mesh=args.mesh)
    else:
        if not args.to_hf:
            raise ValueError("convert --orbax DIR needs --to-hf DIR (the HF directory to write)")
        out = orbax_to_hf(args.orbax, args.to_hf, args.dtype)
    print(f"wrote {out}")
    return 0


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _cmd_generate(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from qwen2vl_jax.config import BucketConfig
    from qwen2vl_jax.hf import Qwen2VLForConditionalGeneration
    from qwen2vl_jax.processing import Qwen2VLProcessor

    def err(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    processor = Qwen2VLProcessor.from_pretrained(args.model)
    runtime = {}
    if args.text_buckets or args.patch_buckets:
        base = BucketConfig()
        runtime["buckets"] = BucketConfig(patch_buckets=args.patch_buckets or base.patch_buckets,
                                          text_buckets=args.text_buckets or base.text_buckets)
    model = Qwen2VLForConditionalGeneration.from_pretrained(args.model, dtype=args.dtype, **runtime)
    err(f"[generate] loaded {args.model} ({model.num_parameters:,} parameters, {args.dtype}) "
        f"in {time.perf_counter() - t0:.1f}s")
    sampling = {}
    if args.temperature is not None:
        sampling["do_sample"] = args.temperature > 0
        if args.temperature > 0:
            sampling["temperature"] = args.temperature
    if args.top_p is not None:
        sampling["top_p"] = args.top_p
    if args.top_k is not None:
        sampling["top_k"] = args.top_k
    if args.precompile:
        n, secs = model.precompile(max_new_tokens=args.max_new_tokens, do_sample=sampling.get("do_sample"),
                                   stream_chunk=args.stream_chunk)
        err(f"[generate] precompiled {n} programs (all configured buckets) in {secs:.1f}s")

    content = [{"type": "image"} for _ in args.image] + [{"type": "video"} for _ in args.video]
    content.append({"type": "text", "text": args.prompt})
    messages = [{"role": "user", "content": content}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=args.image or None, videos=args.video or None, return_tensors="np")
    tok = processor.tokenizer
    eos_ids = set(model.generation_settings().eos_token_id)
    pieces: list[int] = []
    printed = ""

    def stream(chunk: np.ndarray) -> None:
        nonlocal printed
        for t in chunk[0].tolist():
            if t in eos_ids:
                return
            pieces.append(t)
        text_now = tok.decode(pieces, skip_special_tokens=True)
        if not text_now.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            sys.stdout.write(text_now[len(printed):])
            sys.stdout.flush()
            printed = text_now

    timings: dict[str, float] = {}
    model.generate(**inputs, max_new_tokens=args.max_new_tokens, seed=args.seed, streamer=stream,
                   stream_chunk=args.stream_chunk, timings=timings, **sampling)
    final = tok.decode(pieces, skip_special_tokens=True)
    sys.stdout.write(final[len(printed):] + "\n")
    sys.stdout.flush()
    n = int(timings["new_tokens"])
    rate = (n - 1) / timings["decode_s"] if n > 1 and timings["decode_s"] > 0 else float("nan")
    note = "" if args.precompile else " (includes compilation; --precompile separates it)"
    err(f"[generate] prompt {inputs['input_ids'].shape[1]} tokens; prefill {1e3 * timings['prefill_s']:.1f} ms{note}; "
        f"decode {n - 1} tokens in {timings['decode_s']:.3f}s = {rate:.1f} tokens/s")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from qwen2vl_jax.bench import run

    return run(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.inference:
        from qwen2vl_jax.demo.inference import run as run_inference

        return run_inference(args.workdir)
    from qwen2vl_jax.demo.training import run

    return run(args.overrides, args.workdir)


def _distributed(args: argparse.Namespace) -> None:
    from qwen2vl_jax.train.distributed import initialize

    initialize(args.coordinator, args.num_processes, args.process_id)


def _add_distributed_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("multi-process (all three together; automatic on Cloud TPU slices and SLURM)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    g.add_argument("--num-processes", type=int, metavar="N")
    g.add_argument("--process-id", type=int, metavar="I")


def _cmd_train(args: argparse.Namespace) -> int:
    from qwen2vl_jax.train.loop import train
    from qwen2vl_jax.train.run_config import load_run_config

    _distributed(args)

    result = train(load_run_config(args.recipe, args.overrides))
    if result.preempted:
        print(f"preempted: checkpoint of step {result.last_step} saved in {result.run_dir}; "
              "run the same command to resume", file=sys.stderr)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from qwen2vl_jax.train.evaluate import evaluate_run
    from qwen2vl_jax.train.run_config import load_run_config

    _distributed(args)

    run = load_run_config(args.recipe, args.overrides)
    res = evaluate_run(run, model_dir=args.model, step=args.step, show=args.show, num_examples=args.num_examples)
    for ex in res.examples:
        print(f"{'ok' if ex['correct'] else 'XX'}  {ex['question']!r} -> {ex['answer']!r} (reference {ex['reference']!r})")
    print(res.summary())
    if args.json:
        print(json.dumps({"loss": res.loss, "exact_match": res.exact_match, "num_examples": res.num_examples,
                          "loss_tokens": res.loss_tokens, "skipped": res.skipped}))
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from qwen2vl_jax.train.plot import plot_run

    try:
        print(plot_run(args.run, args.out))
    except FileNotFoundError as e:
        raise ValueError(str(e)) from e
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from qwen2vl_jax.plan.command import run

    return run(args)


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
    conv.add_argument("--mesh", help="with --hf: place each tensor onto its shards of this mesh "
                      "(e.g. fsdp=8; default on accelerators: every device on fsdp)")
    conv.set_defaults(func=_cmd_convert)

    gen = sub.add_parser("generate", help="answer a prompt about images / videos, streaming to stdout")
    gen.add_argument("--model", required=True, metavar="DIR",
                     help="checkpoint directory (HF or Orbax) with tokenizer.json and preprocessor_config.json")
    gen.add_argument("--image", action="append", default=[], metavar="PATH", help="an image (repeatable)")
    gen.add_argument("--video", action="append", default=[], metavar="PATH", help="a video file (repeatable)")
    gen.add_argument("--prompt", required=True, help="the user's question")
    gen.add_argument("--system", help="a system prompt (default: the template's)")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--temperature", type=float, help="> 0 samples, 0 is greedy (default: generation_config.json)")
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    gen.add_argument("--precompile", action="store_true", help="compile every configured bucket first and report the time")
    gen.add_argument("--text-buckets", type=_csv_ints, help="override the text buckets, e.g. 128,256,512")
    gen.add_argument("--patch-buckets", type=_csv_ints, help="override the patch buckets, e.g. 256,1024,4096")
    gen.add_argument("--stream-chunk", type=int, default=8, help="tokens decoded on device between prints")
    gen.set_defaults(func=_cmd_generate)

    from qwen2vl_jax.bench import build_parser as bench_parser  # no torch import at this point

    bench = sub.add_parser("bench", help="inference benchmark vs transformers (CPU) or alone at 2B size (--gpu)")
    bench_parser(bench)
    bench.set_defaults(func=_cmd_bench)

    train = sub.add_parser("train", help="train or fine-tune from a YAML recipe; rerun the same command to resume")
    train.add_argument("recipe", help="a recipe, e.g. experiments/configs/stage3_sft_2b.yaml")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. steps=100")
    _add_distributed_flags(train)
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("eval", help="loss and exact-match accuracy of generated answers on eval.source")
    ev.add_argument("recipe")
    ev.add_argument("overrides", nargs="*", metavar="key=value")
    ev.add_argument("--model", metavar="DIR", help="evaluate this model directory (HF or Orbax + tokenizer) "
                    "instead of the run's checkpoint")
    ev.add_argument("--step", type=int, help="the checkpoint step (default: the latest)")
    ev.add_argument("--show", type=int, default=5, help="print this many answers")
    ev.add_argument("--num-examples", type=int, help="default: eval.num_examples")
    ev.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    _add_distributed_flags(ev)
    ev.set_defaults(func=_cmd_eval)

    plot = sub.add_parser("plot", help="write the loss / throughput curves of a run as PNG")
    plot.add_argument("run", help="a run directory (or its metrics.jsonl)")
    plot.add_argument("--out", help="the PNG to write (default: RUN/metrics.png)")
    plot.set_defaults(func=_cmd_plot)

    plan = sub.add_parser("plan", help="compile a recipe's train step (or --model prefill / decode) ahead of time "
                          "for a TPU slice, with libtpu and no TPU: memory per chip against its HBM, FLOPs")
    plan.add_argument("recipe", nargs="?", help="a training recipe (omit with --model)")
    plan.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value",
                      help="recipe overrides, e.g. per_device_batch_size=2 (before or after the options)")
    plan.add_argument("--topology", help="the TPU slice to compile for (or --gpu): v5e:4x4, v5p:4x4x4, v4:2x2x1, "
                      "v6e:8x8 or v5e-16, v5p-128 ...")
    plan.add_argument("--num-slices", type=int, help="identical TPU slices joined over DCN (default 1)")
    plan.add_argument("--gpu", help="instead of --topology: estimate the memory per GPU (h100, h200, ...) by arithmetic")
    plan.add_argument("--gpus", type=int, help="with --gpu: GPUs in the node (default 8)")
    plan.add_argument("--mesh", help="data=..,fsdp=..,tensor=.. (default: the recipe's mesh, else all on fsdp)")
    plan.add_argument("--model", choices=["2b", "7b", "72b", "tiny"], help="plan inference of this preset")
    plan.add_argument("--mode", choices=["prefill", "decode"], help="with --model (default prefill)")
    plan.add_argument("--batch", type=int, help="with --model: rows (default 1)")
    plan.add_argument("--seq", type=int, help="with --model: prompt tokens (prefill) or cache length (decode); default 8192")
    plan.add_argument("--patches", type=int, help="with --model: vision patches of the prompt (default 0)")
    plan.add_argument("--max-new-tokens", type=int, help="with --model: new tokens the cache holds (default 128)")
    plan.add_argument("--dtype", choices=["float32", "bfloat16"], help="with --model: weights and compute (default bfloat16)")
    plan.set_defaults(func=_cmd_plan)

    demo = sub.add_parser("demo", help="train a small model to read, on CPU, and evaluate it (no downloads)")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of experiments/configs/demo.yaml")
    demo.add_argument("--workdir", metavar="DIR", help="the output directory (default: runs/; with "
                      "--inference: a temp dir)")
    demo.add_argument("--inference", action="store_true", help="only the inference path on random weights "
                      "(checkpoint conversion round trip + generate), ~30 s")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit status after a usage error printed as one line (argparse
    prints the usage block first; only its last line, ``prog: error: ...``, says what is wrong)."""
    import contextlib
    import io

    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer):
            return build_parser().parse_args(argv)
    except SystemExit as e:
        lines = buffer.getvalue().strip().splitlines()
        if e.code not in (0, None) and lines:
            print(f"{lines[-1]} (see --help)", file=sys.stderr)
        elif lines:
            print("\n".join(lines), file=sys.stderr)
        return 2 if e.code is None else int(e.code) if isinstance(e.code, int) else 2


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if isinstance(args, int):
        return args
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as e:  # the user's input: status 2, no traceback
        # An ImportError is the user's only when it says what to install (optional extras).
        if isinstance(e, ImportError) and not isinstance(e, ValueError) and "pip install" not in str(e):
            raise
        from qwen2vl_jax.train.distributed import process_label

        print(f"qwen2vl-jax {args.command}: {process_label()}error: {e}", file=sys.stderr)
        return 2
    except (FloatingPointError, RuntimeError) as e:
        from qwen2vl_jax.train.checkpointing import CheckpointWriteError
        from qwen2vl_jax.train.distributed import process_label

        if not isinstance(e, (FloatingPointError, CheckpointWriteError)):
            raise
        # A run that had to stop (a full disk, diverging loss): the message says what is intact.
        print(f"qwen2vl-jax {args.command}: {process_label()}stopped: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
