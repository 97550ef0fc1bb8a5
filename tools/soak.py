"""Soak: many generate calls of mixed sizes in one process, and a long CPU training run. Checks
that the compiled programs never exceed the bucket shapes used and that host memory stops
growing after warm-up. A benchmark (figures for a note), not a test.

    python tools/soak.py generate --calls 1000
    python tools/soak.py train --steps 2000

``generate``: a tiny checkpoint written by the code (random weights), default bucket ladder;
each call draws a batch size (1-3), a prompt length, with or without a picture of a random
size, and a number of new tokens. Every XLA compilation is counted (JAX's compile log); the
bound is one prefill program per (batch, text, patch, cache, sampling) bucket used plus one
decode program per (batch, text, cache, sampling) bucket used. Warm-up: the first call of each
bucket key (it compiles what the calls need); then all the calls run, none may compile, and
host memory (the process's RSS) may grow by less than 10 %.

``train``: the demo recipe through the command line in a subprocess (``qwen2vl-jax train``),
RSS sampled every second, compilations of the train step counted from the compile log.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _CompileCounter(logging.Handler):
    """Counts JAX's "Compiling <fun> ..." log records (``jax_log_compiles``), by function name."""

    PATTERN = re.compile(r"Compiling (\S+)")

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.by_name: dict[str, int] = {}
        self.active = False

    def emit(self, record):
        m = self.PATTERN.search(record.getMessage())
        if m and self.active:
            self.by_name[m.group(1)] = self.by_name.get(m.group(1), 0) + 1


def soak_generate(calls: int, seed: int, warmup: int) -> int:
    import jax
    import numpy as np
    from PIL import Image

    from qwen2vl_jax import Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from qwen2vl_jax.generation.cache import cache_length
    from qwen2vl_jax.layout import bucket_model_inputs, prepare_model_inputs
    from qwen2vl_jax.testing.tiny_checkpoint import write_tiny_checkpoint

    jax.config.update("jax_log_compiles", True)
    counter = _CompileCounter()
    logging.getLogger("jax").addHandler(counter)
    logging.getLogger("jax").setLevel(logging.DEBUG)
    for h in logging.getLogger("jax").handlers:
        if h is not counter:
            h.setLevel(logging.CRITICAL)  # count, do not print
    logging.getLogger("jax").propagate = False

    work = Path(tempfile.mkdtemp(prefix="qwen2vl_soak_"))
    write_tiny_checkpoint(work / "hf", max_pixels=56 * 84)
    processor = Qwen2VLProcessor.from_pretrained(work / "hf")
    model = Qwen2VLForConditionalGeneration.from_pretrained(work / "hf")
    buckets = model.runtime.buckets
    rng = np.random.default_rng(seed)
    words = "the a red blue circle square picture left right of is what where".split()

    def draw(i):
        """Call i's inputs, new tokens, sampling mode and bucket key (batch, text, patches, cache)."""
        b = int(rng.integers(1, 4))
        with_image = bool(rng.integers(0, 2))
        texts, images = [], []
        for _ in range(b):
            n = int(rng.integers(1, 60))
            content = ([{"type": "image"}] if with_image else []) + [
                {"type": "text", "text": " ".join(rng.choice(words, n))}]
            texts.append(processor.apply_chat_template([{"role": "user", "content": content}],
                                                       add_generation_prompt=True))
            if with_image:
                w, h = (int(x) for x in rng.integers(28, 112, 2))
                images.append(Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
        inputs = processor(text=texts, images=images or None, return_tensors="np", padding=True)
        new = int(rng.integers(1, 17))
        batch = prepare_model_inputs(model.config, inputs["input_ids"], inputs["attention_mask"],
                                     inputs.get("pixel_values"), inputs.get("image_grid_thw"))
        bucketed = bucket_model_inputs(model.config, buckets, batch)
        B, S = bucketed["input_ids"].shape
        P = bucketed["pixel_values"].shape[0] if "pixel_values" in bucketed else 0
        T = cache_length(S, new, buckets.cache_multiple)
        return inputs, new, bool(i % 2), (B, S, P, T)

    def call(i, spec):
        inputs, new, sample, _ = spec
        counter.active = True  # count only what generate compiles (not writing the checkpoint)
        model.generate(**inputs, max_new_tokens=new, do_sample=sample, seed=i, eos_token_id=[])
        counter.active = False

    t0 = time.perf_counter()
    specs = [draw(i) for i in range(calls)]
    # Programs: prefill per (batch, text, patches, cache, sampling); the decode loop's state holds
    # the new tokens [batch, cache - text], so decode per (batch, text, cache, sampling).
    prefill_keys = {(*k, smp) for _, _, smp, k in specs}
    decode_keys = {(k[0], k[1], k[3], smp) for _, _, smp, k in specs}
    bound = len(prefill_keys) + len(decode_keys)
    print(f"[soak generate] {calls} calls drawn in {time.perf_counter() - t0:.0f} s: {len(prefill_keys)} prefill "
          f"and {len(decode_keys)} decode bucket keys", flush=True)
    # Warm-up: the first call of every prefill key (which compiles every program the calls need).
    first: dict = {}
    for i, spec in enumerate(specs):
        first.setdefault((*spec[3], spec[2]), i)
    t0 = time.perf_counter()
    for i in sorted(first.values()):
        call(i, specs[i])
    warm_compiles = counter.by_name.get("jit(run)", 0)
    rss_after_warmup = _rss_mib()
    print(f"[soak generate] warm-up: {len(first)} calls, {warm_compiles} programs, {time.perf_counter() - t0:.0f} s, "
          f"RSS {rss_after_warmup:.0f} MiB", flush=True)
    t0 = time.perf_counter()
    for i, spec in enumerate(specs):
        call(i, spec)
        if (i + 1) % 100 == 0:
            print(f"[soak generate] {i + 1}/{calls} calls, {time.perf_counter() - t0:.0f} s, "
                  f"RSS {_rss_mib():.0f} MiB, compilations {sum(counter.by_name.values())}", flush=True)
    rss_end = _rss_mib()
    # make_prefill / make_decode both jit a function named ``run``; the rest are one-off
    # conversions of the first call (the sampling knobs, the PRNG seed).
    programs = counter.by_name.get("jit(run)", 0)
    others = sum(counter.by_name.values()) - programs
    growth = 100 * (rss_end - rss_after_warmup) / rss_after_warmup
    print(f"generate soak: {calls} calls in {time.perf_counter() - t0:.0f} s after the warm-up")
    print(f"  buckets used: {len(prefill_keys)} prefill (batch, text, patches, cache, sampling), "
          f"{len(decode_keys)} decode (batch, text, cache, sampling)")
    print(f"  compiled: {programs} prefill/decode programs in all (bound {bound}), "
          f"{programs - warm_compiles} after the warm-up; {others} other: {dict(sorted(counter.by_name.items()))}")
    print(f"  host RSS after the warm-up {rss_after_warmup:.0f} MiB, after {calls} more calls {rss_end:.0f} MiB "
          f"({growth:+.1f} %)")
    # (A decode program first needed after the warm-up is still within the bound: a warm-up call
    # with one new token never runs the decode loop.)
    ok = programs <= bound and growth < 10
    print("  OK" if ok else "  FAILED")
    return 0 if ok else 1


def soak_train(steps: int, warmup_s: float, extra: list[str]) -> int:
    out = Path(tempfile.mkdtemp(prefix="qwen2vl_soak_train_"))
    cmd = [sys.executable, "-m", "qwen2vl_jax", "train", str(ROOT / "experiments/configs/demo.yaml"),
           f"output_dir={out}", f"steps={steps}", "log_every=100", f"checkpoint_every={max(steps // 4, 1)}",
           "tensorboard=false", *extra]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_LOG_COMPILES": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    samples: list[tuple[float, float]] = []
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:  # the trainer and its grain worker processes
            pids = [proc.pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                               text=True).stdout.split()]
            samples.append((time.perf_counter() - t0, sum(_rss_mib(p) for p in pids)))
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(1.0)
    stdout = proc.stdout.read()
    reader.join(timeout=5)
    if proc.returncode != 0:
        print(stdout[-2000:], "".join(err_lines)[-2000:])
        return 1
    compiles = [line for line in err_lines if "Compiling" in line]
    step_compiles = [line for line in compiles if "train_step" in line or "step" in line.split("Compiling")[1][:40]]
    after = [rss for t, rss in samples if t >= warmup_s]
    growth = 100 * (after[-1] - after[0]) / after[0] if len(after) > 1 else float("nan")
    print(f"train soak: {steps} steps in {time.perf_counter() - t0:.0f} s (run directory {out})")
    print(f"  compilations: {len(compiles)} in all, {len(step_compiles)} of the train step")
    print(f"  host RSS (trainer + workers) at {warmup_s:.0f} s {after[0]:.0f} MiB, at the end "
          f"{after[-1]:.0f} MiB ({growth:+.1f} %), peak {max(r for _, r in samples):.0f} MiB")
    ok = growth < 10
    print("  OK" if ok else "  FAILED")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--calls", type=int, default=1000)
    g.add_argument("--warmup", type=int, default=200, help="calls before the reference RSS is taken")
    g.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--warmup-s", type=float, default=120.0, help="seconds before the reference RSS")
    t.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    a = p.parse_args()
    if a.what == "generate":
        return soak_generate(a.calls, a.seed, a.warmup)
    return soak_train(a.steps, a.warmup_s, a.overrides)


if __name__ == "__main__":
    sys.exit(main())
