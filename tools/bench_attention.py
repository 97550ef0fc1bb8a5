"""Attention benchmark: blocks visited by our block-sparse kernel, and (on a GPU or TPU)
measured forward/backward TFLOP/s of every implementation.

    python tools/bench_attention.py --blocks-only        # any machine, a second: the block table
    python tools/bench_attention.py                      # GPU/TPU: + timings (cuDNN on GPU)

Shapes: (a) ViT stream, 16 images x 1,024 patches, 16 heads, head_dim 80; (b) ViT stream of
mixed image sizes summing to 16,384 patches; (c) packed decoder rows of 8,192 tokens with the 2B
text heads (12 query / 2 kv heads, head_dim 128), causal.

"Effective" TFLOP/s count only the work the segment mask keeps (block-diagonal, and causal
triangles for (c)): 4*D*H per kept (query, key) pair forward, 2.5x that backward. The cuDNN
reference on a GPU is its dense kernel on ONE 1,024-patch image (the target: our kernel on (a)
against it).
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from qwen2vl_jax.kernels.block_table import kv_ranges
from qwen2vl_jax.ops.attention import attention
from qwen2vl_jax.perf.timing import alternate, median

# Patch counts of square images (even sides: the 2x2 merge), in a mixed order; sum = 16,384.
MIXED_SIZES = (1024, 4096, 196, 2304, 576, 1600, 36, 2916, 400, 1296, 256, 784, 900)


class Shape(NamedTuple):
    name: str
    segment_lengths: tuple[tuple[int, ...], ...]  # per batch row
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool


def _packed_rows(rows: int, length: int, seed: int) -> tuple[tuple[int, ...], ...]:
    """Training rows filled with documents of log-normal length (median ~700 tokens)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rows):
        lengths: list[int] = []
        while sum(lengths) < length:
            lengths.append(int(np.clip(rng.lognormal(6.5, 0.9), 16, length)))
        lengths[-1] -= sum(lengths) - length
        out.append(tuple(n for n in lengths if n > 0))
    return tuple(out)


SHAPES = (
    Shape("(a) ViT 16 x 1024", ((1024,) * 16,), 16, 16, 80, False),
    Shape("(b) ViT mixed 16384", (MIXED_SIZES,), 16, 16, 80, False),
    Shape("(c) text 8192 packed", _packed_rows(2, 8192, seed=0), 12, 2, 128, True),
)


def segment_ids(shape: Shape) -> jax.Array:
    rows = [np.repeat(np.arange(len(lens), dtype=np.int32), lens) for lens in shape.segment_lengths]
    return jnp.asarray(np.stack(rows))


def kept_pairs(shape: Shape) -> int:
    """(query, key) pairs the mask keeps, summed over rows (per head)."""
    per = (lambda n: n * (n + 1) // 2) if shape.causal else (lambda n: n * n)
    return sum(per(n) for lens in shape.segment_lengths for n in lens)


def block_row(shape: Shape, block: int) -> dict:
    seg = segment_ids(shape)
    b, s = seg.shape
    visited = int(kv_ranges(seg, seg, block, block, shape.causal).count.sum())
    n = s // block
    dense = b * n * n
    dense_causal = b * n * (n + 1) // 2
    return {"shape": shape.name, "block": block, "visited": visited, "dense": dense,
            "fraction": visited / dense, "vs_causal_dense": visited / dense_causal if shape.causal else None,
            "ideal": kept_pairs(shape) / (b * s * s)}


def print_blocks(block: int) -> None:
    print(f"Blocks visited per head, {block}x{block} blocks (dense = every block of the stream):")
    print(f"{'shape':24} {'visited':>8} {'dense':>8} {'visited/dense':>16} {'ideal':>8}")
    for shape in SHAPES:
        r = block_row(shape, block)
        extra = f"  (vs causal dense {r['vs_causal_dense']:.3f})" if shape.causal else ""
        ratio = f"{r['fraction']:.4f} = 1/{1 / r['fraction']:.1f}"
        print(f"{r['shape']:24} {r['visited']:8d} {r['dense']:8d} {ratio:>16} {r['ideal']:8.4f}{extra}")
    print("ideal = fraction of (query, key) pairs the mask keeps (elements, not blocks).")


# ----------------------------------------------------------------------------- timings


def _time(fn, *args, iters: int) -> float:
    """Median seconds of ``iters`` calls after a compiling warm-up call. No settling pause: one
    device kernel after another, nothing else runs on the host between them."""
    def call():
        return jax.block_until_ready(fn(*args))

    call()  # compile + warm up
    return median(alternate({"fn": call}, iters, settle_s=0.0)["fn"])


def _inputs(b, s, hq, hkv, d, dtype):
    keys = jax.random.split(jax.random.key(0), 3)
    return (jax.random.normal(keys[0], (b, s, hq, d), dtype), jax.random.normal(keys[1], (b, s, hkv, d), dtype),
            jax.random.normal(keys[2], (b, s, hkv, d), dtype))


def _fwd_bwd(impl, seg, causal):
    def fwd(q, k, v):
        return attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=causal, impl=impl)

    def loss(q, k, v):
        return fwd(q, k, v).astype(jnp.float32).sum()

    return jax.jit(fwd), jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def time_impls(shape: Shape, impls: list[str], dtype, iters: int) -> None:
    seg = segment_ids(shape)
    b, s = seg.shape
    q, k, v = _inputs(b, s, shape.heads, shape.kv_heads, shape.head_dim, dtype)
    flops = 4 * shape.head_dim * shape.heads * kept_pairs(shape)
    for impl in impls:
        try:
            fwd, bwd = _fwd_bwd(impl, seg, shape.causal)
            t_f = _time(fwd, q, k, v, iters=iters)
            t_b = _time(bwd, q, k, v, iters=iters)
        except Exception as e:  # noqa: BLE001 -- an impl that cannot run a shape says why; the rest go on
            print(f"  {impl:13} -- {type(e).__name__}: {str(e).splitlines()[0][:100]}")
            continue
        print(f"  {impl:13} fwd {t_f * 1e3:8.2f} ms {flops / t_f / 1e12:7.1f} TFLOP/s   "
              f"bwd {t_b * 1e3:8.2f} ms {2.5 * flops / t_b / 1e12:7.1f} TFLOP/s")


def time_cudnn_one_image(dtype, iters: int) -> None:
    """The reference: cuDNN's dense kernel on one 1,024-patch image, 16 heads, D=80."""
    q, k, v = _inputs(1, 1024, 16, 16, 80, dtype)
    flops = 4 * 80 * 16 * 1024 * 1024

    def fwd(q, k, v):
        return attention(q, k, v, q_segment_ids=None, kv_segment_ids=None, causal=False, impl="cudnn")

    try:
        t_f = _time(jax.jit(fwd), q, k, v, iters=iters)
        bwd = jax.jit(jax.grad(lambda *a: fwd(*a).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
        t_b = _time(bwd, q, k, v, iters=iters)
    except Exception as e:  # noqa: BLE001 -- report, do not abort the other numbers
        print(f"  cudnn (1 image) -- {type(e).__name__}: {str(e).splitlines()[0][:100]}")
        return
    print(f"  cudnn, ONE 1024-patch image, dense: fwd {t_f * 1e3:.3f} ms {flops / t_f / 1e12:.1f} TFLOP/s   "
          f"bwd {t_b * 1e3:.3f} ms {2.5 * flops / t_b / 1e12:.1f} TFLOP/s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks-only", action="store_true", help="print the block table and stop")
    parser.add_argument("--block", default="128", help="block size(s) of the table, e.g. 64,128")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--impls", default=None, help="comma-separated; default per backend")
    args = parser.parse_args(argv)

    for block in args.block.split(","):
        print_blocks(int(block))
    backend = jax.default_backend()
    if args.blocks_only or backend == "cpu":
        if not args.blocks_only:
            print("(CPU backend: timings need a GPU or TPU; Pallas kernels would run in interpret mode)")
        return
    dtype = jnp.dtype(args.dtype)
    default = {"gpu": "xla,xla_blocked,pallas_gpu,block_sparse", "tpu": "xla,xla_blocked,splash,block_sparse"}
    impls = (args.impls or default.get(backend, "xla,block_sparse")).split(",")
    print(f"\nTimings on {jax.devices()[0].device_kind}, {args.dtype}, median of {args.iters} "
          "(effective TFLOP/s: kept pairs only)")
    for shape in SHAPES:
        print(shape.name)
        time_impls(shape, [i for i in impls if not (i == "xla_blocked" and shape.causal)], dtype, args.iters)
    if backend == "gpu":
        time_cudnn_one_image(dtype, args.iters)


if __name__ == "__main__":
    main()
