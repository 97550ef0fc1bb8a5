"""Measure the peak host memory (RSS) of checkpoint conversion on a random full-size checkpoint.

    python tools/measure_convert_memory.py --preset 2b --workdir /tmp/convmem [--keep]

1. Writes a random HF checkpoint of the preset (bf16, hub-style 2 GB shards + index), streaming
   one tensor at a time (the writer itself never holds the model).
2. Loads it with `Qwen2VLForConditionalGeneration.from_pretrained` in a fresh subprocess and
   reads the peak RSS. Runs `qwen2vl-jax convert --hf ... --out ...` (HF -> Orbax) in a fresh subprocess and reads
   its peak RSS; then `convert --orbax ... --to-hf ...` (Orbax -> HF) the same way.
3. Prints the model size and each peak, and the ratio peak / model size.
Needs about 3x the model size of free disk (2B: ~13 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np


def write_random_checkpoint(preset: str, out: Path, shard_bytes: int = 2 * 2**30) -> int:
    from flax import nnx

    from qwen2vl_jax.checkpoint.safetensors_io import SAFE_INDEX, _hf_layout, _write_safetensors
    from qwen2vl_jax.config import RuntimeConfig, get_preset
    from qwen2vl_jax.model import abstract_model

    cfg = get_preset(preset)
    abstract = nnx.to_pure_dict(nnx.state(abstract_model(cfg, RuntimeConfig(param_dtype="bfloat16")), nnx.Param))
    layout = _hf_layout(cfg, abstract, np.dtype(ml_dtypes.bfloat16))
    shards, size = [[]], 0
    for entry in layout:
        nbytes = int(np.prod(entry[1])) * 2
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    rng = np.random.default_rng(0)

    def tensors():
        for name, shape, _ in layout:
            yield name, (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(ml_dtypes.bfloat16)

    out.mkdir(parents=True, exist_ok=True)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    gen = tensors()
    for shard, name in zip(shards, names):
        _write_safetensors(out / name, shard, gen)
    total = sum(int(np.prod(e[1])) * 2 for e in layout)
    with open(out / SAFE_INDEX, "w") as f:
        json.dump({"metadata": {"total_size": total},
                   "weight_map": {e[0]: n for s, n in zip(shards, names) for e in s}}, f)
    with open(out / "config.json", "w") as f:
        json.dump(cfg.to_hf_dict("bfloat16"), f, indent=2)
    return total


def peak_rss_of(cmd: list[str]) -> tuple[int, float]:
    """Run cmd in a child; return (its peak RSS in bytes, seconds). Uses a wrapper child so the
    measurement is of that one process tree, not of earlier children."""
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return int(proc.stdout.strip().splitlines()[-1]) * 1024, time.time() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="2b")
    p.add_argument("--workdir", default="/tmp/qwen2vl_convert_memory")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints afterwards")
    args = p.parse_args()
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    hf, orbax, back = work / "hf", work / "orbax", work / "hf_back"
    t0 = time.time()
    size = write_random_checkpoint(args.preset, hf)
    print(f"random {args.preset} checkpoint: {size / 2**30:.2f} GiB bf16, written in {time.time() - t0:.0f}s")
    cli = [sys.executable, "-m", "qwen2vl_jax"]
    load_code = ("import sys; from qwen2vl_jax import Qwen2VLForConditionalGeneration as M; "
                 "M.from_pretrained(sys.argv[1], dtype='bfloat16')")
    load = [sys.executable, "-c", load_code, str(hf)]
    for label, cmd in (("from_pretrained(HF, bf16)", load),
                       ("HF -> Orbax", cli + ["convert", "--hf", str(hf), "--out", str(orbax)]),
                       ("Orbax -> HF", cli + ["convert", "--orbax", str(orbax), "--to-hf", str(back)])):
        peak, secs = peak_rss_of(cmd)
        print(f"{label}: peak RSS {peak / 2**30:.2f} GiB = {peak / size:.2f} x model size ({secs:.0f}s)")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
