"""Inference benchmark: ours versus transformers on CPU, or ours alone on a GPU.

CPU comparison (default; needs the ``[parity]`` extra, torch and transformers)::

    python tools/bench_inference.py [--runs 5] [--new-tokens 32] [--config mid]

builds one random transformers ``Qwen2VLForConditionalGeneration`` (the ``mid`` config: ~59M
parameters, the exact count is printed), saves it with ``save_pretrained`` and loads that same
directory into both implementations: ours with ``from_pretrained(dir, dtype="float32")``,
transformers with ``attn_implementation="sdpa"`` in fp32 under ``torch.no_grad`` (torch threads
left at their default). The inputs are a one-image prompt (grid (1, 16, 16) = 64 image tokens
plus 40 text tokens) at batch 1, and 8 left-padded rows with different image grids and text
lengths at batch 8. Every measurement alternates (ours, theirs, ours, theirs, ...) after a
warm-up; medians over ``--runs`` (and the best run, which is robust to CPU contention). Our first
calls compile (XLA); that compile time is measured with jax.monitoring and reported separately,
never inside a timing, and the timed runs are checked to compile nothing.

GPU mode (``--gpu``; no torch needed) runs our model alone at a released size (``--preset 2b``,
bf16 weights and compute, random init), batch 1, and prints decode tokens/s and the fraction of
the HBM-bandwidth roofline reached. ``--gpu --allow-cpu --preset tiny --hbm-gbps X`` runs the
same code path on CPU (for tests).

Sweep (``--sweep``; torch and transformers as above) runs both over a grid of 36 points (batch
1 and 4; no vision, one image of 256, 1,024 or 4,096 patches, four images of 1,024 patches of
different aspect ratios, a 16-frame video; 32, 512 or 2,048 text tokens) with the ``mid6``
checkpoint, and prints per point forward, prefill, decode tokens/s and generate time with the
ratios, the worst and median ratio, and how many programs each bucket ladder compiles for the
points run (``--points`` selects, ``--png`` plots prefill against image tokens)::

    qwen2vl-jax bench --sweep --runs 3 --json sweep.json --png sweep_prefill.png
    qwen2vl-jax bench --sweep --points 'b1-img1024-t32,b4-*-t512' --runs 1

Modules, by what they measure: ``cli`` (arguments, dispatch), ``inputs`` (model configs and
batch layouts), ``report`` (the printed table), ``cpu_vs_transformers`` and ``sweep`` (the only
modules that import torch / transformers, inside their functions), ``grid`` (the sweep's points,
inputs and per-ladder program counts, numpy only), ``sweep_report`` (its table and plot),
``gpu_roofline`` (the ``--gpu`` mode).
"""

from qwen2vl_jax.bench.cli import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
