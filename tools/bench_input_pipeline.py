"""Host throughput of the input pipeline at a recipe's budgets: can one host feed its chips?

    python tools/bench_input_pipeline.py experiments/configs/stage2_multitask_2b.yaml \\
        --groups 8 --workers 8 --steps 3 --step-time-s 9.5 [key=value ...]

Runs ``PackedBatches`` as the training loop does (``--groups`` local packing groups, one per
local chip; ``per_device_batch_size`` rows each; ``grad_accum`` microbatches per step; pixels in
``runtime.dtype``) on the recipe's data source when it can be opened, else on the synthetic task,
and prints: samples/s and packed rows/s (per worker process and per CPU-second of the workers),
host memory per step (the yielded arrays' bytes, the shared-memory slots, the RSS growth of the
main process and the workers' RSS), and with ``--step-time-s`` (e.g. from ``qwen2vl-jax plan``)
whether one host produces a step's rows within a step. The first step (worker start-up) is
timed separately. Without the recipe's tokenizer or checkpoint the demo's built-in tokenizer is
used: the packing budgets, not the vocabulary, set the host cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

SYNTHETIC = {"type": "synthetic_visual_qa", "num_records": 100000, "seed": 0, "all_questions": True}


def _rss(pid: int | str = "self") -> int:
    """Resident set size in bytes (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if abs(n) >= 1e9 else f"{n / 1e6:.1f} MB"


def _setup(recipe: str, overrides: list[str], say):
    import dataclasses
    import tempfile

    from data_pipelines.sources import open_source
    from qwen2vl_jax.train.run_config import load_run_config
    from qwen2vl_jax.train.setup import BUILTIN_TOKENIZER, build_model_config, build_processor

    if not any(o.startswith("output_dir=") for o in overrides):
        overrides = [f"output_dir={tempfile.mkdtemp(prefix='bench_input_')}", *overrides]
    run = load_run_config(recipe, overrides)
    try:
        processor = build_processor(run)
        cfg = build_model_config(run, processor)
    except (OSError, ValueError) as err:
        say(f"tokenizer / checkpoint not readable ({str(err).splitlines()[0][:120]}): the built-in tokenizer")
        run = dataclasses.replace(run, tokenizer=BUILTIN_TOKENIZER,
                                  model=dataclasses.replace(run.model, checkpoint=None,
                                                            preset=run.model.preset or "tiny"))
        processor = build_processor(run)
        cfg = build_model_config(run, processor)
    try:
        open_source(dict(run.data.source), base_dir=os.getcwd())
        say(f"source: the recipe's {run.data.source.get('type')}")
    except (OSError, ValueError) as err:
        say(f"source: the recipe's is not readable ({str(err).splitlines()[0][:120]}): synthetic_visual_qa")
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, source=SYNTHETIC))
    return run, processor, cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    ap.add_argument("--groups", type=int, default=8, help="local packing groups (chips on this host)")
    ap.add_argument("--workers", type=int, default=None, help="data.num_workers (default: the recipe's)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after the first")
    ap.add_argument("--step-time-s", type=float, default=None, help="the train step's time, e.g. from `plan`")
    ap.add_argument("--chip", default=None, help="without --step-time-s: estimate it for this chip (h100, v5e, ...) "
                    "from the train FLOPs of one group's step (perf.flops) at --mfu of its bf16 peak")
    ap.add_argument("--mfu", type=float, default=0.4, help="with --chip (default 0.4)")
    ap.add_argument("--host-groups", type=int, default=None,
                    help="groups (chips) of a full host, for the extrapolation (default: --groups)")
    ap.add_argument("--host-workers", type=int, default=None,
                    help="data workers of a full host, one core each (default: the recipe's data.num_workers)")
    args = ap.parse_args(argv)
    import dataclasses

    from data_pipelines.pipeline import PackedBatches
    from qwen2vl_jax.layout.packing import PIXEL_DTYPES

    say = print
    run, processor, cfg = _setup(args.recipe, args.overrides, say)
    data = run.data if args.workers is None else dataclasses.replace(run.data, num_workers=args.workers)
    pixel_dtype = run.runtime.dtype if run.runtime.dtype in PIXEL_DTYPES else "float32"
    A, G, R = run.grad_accum, args.groups, run.per_device_batch_size
    say(f"budgets: {A} microbatches x {G} groups x {R} rows x {data.text_budget} tokens, "
        f"{R * data.patches_per_row} patches per group, pixels {pixel_dtype}; {data.num_workers} worker(s), "
        f"{os.cpu_count()} CPU(s) here")

    rss0 = _rss()
    it = PackedBatches(cfg, data, processor, rows=R, grad_accum=A, num_groups=G, seed=run.seed,
                       pixel_dtype=pixel_dtype, base_dir=os.getcwd())
    t0 = time.monotonic()
    first = next(it)
    t_first = time.monotonic() - t0
    source = it._source
    pids = list(getattr(source, "pids", []))
    spent0 = list(source.produce_seconds)
    wait0, copy0 = getattr(source, "wait_seconds", 0.0), getattr(source, "copy_seconds", 0.0)
    step_bytes = sum(v.nbytes for v in first["batch"].values())
    step_time = args.step_time_s
    if step_time is None and args.chip:
        from qwen2vl_jax.perf.devices import device_spec
        from qwen2vl_jax.perf.flops import train_flops_from_batch

        chip = device_spec(args.chip)
        if chip is None:
            raise SystemExit(f"unknown chip {args.chip!r}")
        flops = train_flops_from_batch(cfg, first["batch"], freeze=run.freeze) / G  # one chip's share
        step_time = flops / (chip.peak_bf16_tflops * 1e12 * args.mfu)
        say(f"step time estimate: {flops / 1e12:.1f} TFLOP per chip per step (this data) / ({chip.name} "
            f"{chip.peak_bf16_tflops:.0f} TFLOP/s x MFU {args.mfu}) = {step_time:.2f} s")
    samples, t1 = 0.0, time.monotonic()
    for _ in range(args.steps):
        item = next(it)
        samples += item["stats"]["samples"]
    wall = time.monotonic() - t1
    rows_n = args.steps * A * G * R
    # The workers' own time for exactly the timed steps (prefetched work is not counted twice).
    busy_wall, busy_cpu = (b - a for a, b in zip(spent0, source.produce_seconds))
    rss_main, rss_workers = _rss() - rss0, sum(_rss(p) for p in pids)
    wait = getattr(source, "wait_seconds", 0.0) - wait0
    copy = getattr(source, "copy_seconds", 0.0) - copy0
    stats = item["stats"]
    it.close()

    workers = max(len(pids), 1)
    say(f"first step (start-up): {t_first:.2f} s; then {args.steps} steps in {wall:.2f} s wall "
        f"({wall / args.steps:.2f} s/step with {workers} {'worker(s)' if pids else 'main process (in-process)'})")
    say(f"per step: {samples / args.steps:.0f} samples in {A * G * R} rows; text padding "
        f"{stats['text_padding_fraction']:.3f}, patch padding {stats['patch_padding_fraction']:.3f}")
    per_core_rows, per_core_samples = rows_n / busy_cpu, samples / busy_cpu
    say(f"per host core (rows and samples per CPU-second of the data processes): {per_core_samples:.1f} samples/s, "
        f"{per_core_rows:.3f} packed rows/s  (per worker wall-second: {samples / busy_wall:.1f} samples/s, "
        f"{rows_n / busy_wall:.3f} rows/s)")
    if pids:
        say(f"main process per step: waiting {wait / args.steps:.2f} s, copying into the step's arrays "
            f"{copy / args.steps:.3f} s")
    host_g = args.host_groups or G
    prefetch = it.prefetch if pids else 0
    say(f"host memory per step: yielded arrays {_gb(step_bytes)} ({_gb(step_bytes / G * host_g)} for {host_g} "
        f"groups), worker shared-memory slots {_gb(prefetch * step_bytes)} ({prefetch} steps ahead); RSS growth "
        f"of the main process {_gb(rss_main)}, workers' RSS {_gb(rss_workers)}")
    if step_time:
        need = A * host_g * R  # rows one host yields per step
        host_workers = max(args.host_workers or run.data.num_workers, 1)
        produce = need / (per_core_rows * host_workers)
        verdict = "yes" if produce <= step_time else "NO"
        say(f"feeds its chips? {verdict}: a step needs {need} rows per host ({A} x {host_g} groups x {R}); "
            f"{host_workers} worker core(s) ({min(host_workers, host_g)} packing, the rest preprocessing ahead) at "
            f"{per_core_rows:.3f} rows/s each make them in {produce:.2f} s per "
            f"{step_time:.2f} s step (rows per step needed / rows per second produced); "
            f"{need / step_time / per_core_rows:.1f} worker cores would be needed at this rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
