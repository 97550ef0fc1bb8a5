"""``qwen2vl-jax bench --sweep``: ours against transformers over the grid of ``bench/grid.py``.

One random transformers checkpoint (``--config``, default ``mid6``: text 512 x 6 layers, GQA
8/2, vocab 32,000; ViT 384 x 6 layers) saved with ``save_pretrained`` and loaded into both: ours
in fp32 with its bucket padding (``RuntimeConfig.buckets``, the fine ladder by default),
transformers 4.57 with sdpa in fp32 under ``torch.no_grad``. Per point, alternating ours /
theirs after two warm-up calls each: forward (all-position logits), prefill (prompt -> first
token: ``generate(max_new_tokens=1)``), ``generate(max_new_tokens=N)`` (greedy, min_new_tokens =
max_new_tokens, so eos never stops a row) and decode tokens/s = B (N - 1) / (genN - gen1). Our
compile time is measured apart (the first calls) and never inside a timing. torch and
transformers are imported inside the functions that use them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Any

import numpy as np

from qwen2vl_jax.bench.grid import Point, ladder_report, make_point_inputs, select
from qwen2vl_jax.bench.inputs import EOS, PAD
from qwen2vl_jax.perf.compile_count import CompileCounter
from qwen2vl_jax.perf.timing import alternate, median

METRICS = ("forward", "prefill", "generate")


def _functions(ours, hf, inputs: dict[str, np.ndarray], n_new: int):
    import torch

    t_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
    kw = {"do_sample": False, "repetition_penalty": 1.0, "eos_token_id": EOS, "pad_token_id": PAD}

    def theirs(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    o = {"forward": lambda: ours(**inputs).logits,
         "prefill": lambda: ours.generate(**inputs, max_new_tokens=1, min_new_tokens=1, **kw),
         "generate": lambda: ours.generate(**inputs, max_new_tokens=n_new, min_new_tokens=n_new, **kw)}
    t = {"forward": theirs(lambda: hf(**t_inputs).logits.numpy()),
         "prefill": theirs(lambda: hf.generate(**t_inputs, max_new_tokens=1, min_new_tokens=1, **kw).numpy()),
         "generate": theirs(lambda: hf.generate(**t_inputs, max_new_tokens=n_new, min_new_tokens=n_new,
                                                **kw).numpy())}
    return o, t


def measure_point(point: Point, ours, hf, rng: np.random.Generator, runs: int, n_new: int,
                  clock: CompileCounter) -> dict[str, Any]:
    """One grid point: warm-up (our compile measured), checks, then alternating timed runs."""
    cfg = ours.config
    inputs = make_point_inputs(point, rng, cfg.vision.patch_dim, cfg.text.vocab_size)
    o, t = _functions(ours, hf, inputs, n_new)
    compile_s, compiles = 0.0, clock.backend_compiles
    outs = {}
    for m in METRICS:
        _, comp, outs[m, "ours"] = clock.measure(o[m])
        compile_s += comp
        outs[m, "theirs"] = t[m]()
        o[m](), t[m]()  # second warm-up: allocators, oneDNN primitive caches
    compiles = clock.backend_compiles - compiles
    mask = inputs["attention_mask"].astype(bool)
    diff = float(np.abs(outs["forward", "ours"] - outs["forward", "theirs"])[mask].max())
    same = int((outs["generate", "ours"] == outs["generate", "theirs"]).all(axis=1).sum())
    del outs
    before = clock.backend_compiles
    times = alternate({(m, who): fn[m] for m in METRICS for who, fn in (("ours", o), ("theirs", t))}, runs)
    med = {k: median(v) for k, v in times.items()}
    res: dict[str, Any] = {"point": point.name, "batch": point.batch, "vision": point.vision, "text": point.text,
                           "prompt_tokens": int(inputs["input_ids"].shape[1]),
                           "image_tokens": point.batch * point.vision_tokens_per_row,
                           "max_logit_diff": diff, "greedy_identical_rows": same, "compile_s": compile_s,
                           "compiles": compiles, "recompiles_during_timing": clock.backend_compiles - before}
    for who in ("ours", "theirs"):
        for m in METRICS:
            res[f"{m}_ms_{who}"] = 1e3 * med[m, who]
        decode_s = med["generate", who] - med["prefill", who]
        res[f"decode_tok_s_{who}"] = point.batch * (n_new - 1) / decode_s if decode_s > 0 else float("nan")
    for m in METRICS:
        res[f"{m}_ratio"] = res[f"{m}_ms_theirs"] / res[f"{m}_ms_ours"]
    res["decode_ratio"] = res["decode_tok_s_ours"] / res["decode_tok_s_theirs"]
    return res


def run_sweep(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import torch
    import transformers
    from transformers import Qwen2VLForConditionalGeneration as HFModel

    from qwen2vl_jax import Qwen2VLForConditionalGeneration
    from qwen2vl_jax.bench.cpu_vs_transformers import build_hf_checkpoint
    from qwen2vl_jax.config import BucketConfig

    transformers.logging.set_verbosity_error()
    points = select(args.points)
    n_new = args.new_tokens or 64
    ladders = {"fine (default)": BucketConfig(), "powers of two": BucketConfig.powers_of_two()}
    buckets = ladders["powers of two"] if args.ladder == "pow2" else ladders["fine (default)"]
    print(f"# sweep: qwen2vl_jax vs transformers {transformers.__version__} (torch {torch.__version__}, "
          f"sdpa, fp32, {torch.get_num_threads()} threads); jax {jax.__version__} on "
          f"{jax.devices()[0].device_kind}; config {args.config!r}; {len(points)} points; runs={args.runs}; "
          f"new_tokens={n_new}; our ladder: {args.ladder}", flush=True)
    with tempfile.TemporaryDirectory(prefix="qwen2vl_sweep_") as tmp:
        n_params = build_hf_checkpoint(args.config, tmp, seed=args.seed)
        ours = Qwen2VLForConditionalGeneration.from_pretrained(tmp, dtype="float32", buckets=buckets)
        hf = HFModel.from_pretrained(tmp, attn_implementation="sdpa", dtype=torch.float32).eval()
    print(f"# {n_params:,} parameters", flush=True)
    rng = np.random.default_rng(args.seed)
    results, t0 = [], time.perf_counter()
    with CompileCounter() as clock:
        for i, p in enumerate(points):
            r = measure_point(p, ours, hf, rng, args.runs, n_new, clock)
            results.append(r)
            print(f"[sweep {i + 1}/{len(points)}] {p.name}: forward {r['forward_ms_ours']:.0f}/"
                  f"{r['forward_ms_theirs']:.0f} ms, prefill {r['prefill_ms_ours']:.0f}/"
                  f"{r['prefill_ms_theirs']:.0f} ms, decode {r['decode_tok_s_ours']:.1f}/"
                  f"{r['decode_tok_s_theirs']:.1f} tok/s (ours/theirs); compile {r['compile_s']:.1f} s; "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    ladder = ladder_report(points, ladders, n_new)
    from qwen2vl_jax.bench.sweep_report import format_sweep, plot_prefill

    print(format_sweep(results, ladder, n_new))
    out: dict[str, Any] = {"parameters": n_params, "config": args.config, "runs": args.runs, "new_tokens": n_new,
                           "ladder": args.ladder, "points": results, "ladders": ladder}
    if args.png:
        out["png"] = plot_prefill(results, args.png)
        print(f"prefill plot: {out['png']}")
    return out
