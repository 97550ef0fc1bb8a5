"""Attention dispatch: one signature for every implementation.

``attention(q, k, v, *, q_segment_ids, kv_segment_ids, causal, impl, scale)``:
  q: [B, Sq, Hq, D]; k, v: [B, Skv, Hkv, D]; segment ids int32[B, Sq] / int32[B, Skv] (or None:
  one segment per row). A query attends to a key iff their segment ids are equal (and, if
  causal, the key is not after the query; when Sq < Skv the queries are the last Sq positions).
  Query head h uses kv head h // (Hq // Hkv) (GQA, HF ``repeat_kv``). Softmax statistics are fp32.
Padding gets its own segment id, so no row is ever fully masked in practice. If one is, ``xla``
gives it a uniform softmax (HF masks with finfo.min, not -inf: docs/numerics.md) and ``block_sparse``
gives 0; neither gives NaN (splash would: it divides by zero).

Implementations (``IMPLEMENTATIONS``):
  * ``xla``: dense einsum/softmax in fp32 with a segment mask; the oracle, runs everywhere.
  * ``xla_blocked``: each query block visits the key blocks its segments can meet (the kernels'
    block ranges), in an XLA loop with an online softmax; sparse for sorted ids (the packed ViT
    stream), exact for any. Forward and backward (FlashAttention-2 style) are sparse; see
    ``ops/blocked_attention.py``. Runs when Sq and Skv are multiples of 128, Skv > 128 and, if
    causal, Sq == Skv; every other shape falls back to xla. On CPU its undifferentiated forward
    is the windowed schedule (``resolve_impl``).
  * ``block_sparse`` (ours, ``kernels/``): Pallas flash attention that visits only the key blocks
    whose segment range meets the query block, forward and backward; Mosaic on TPU, Triton on
    GPU. Cost ~ sum of squared segment lengths instead of (stream length)^2.
  * ``splash``: JAX's TPU splash attention with ``SegmentIds`` through ``shard_map`` on the mesh.
  * ``pallas_gpu``: JAX's Pallas-Triton ``mha`` with segment ids (self-attention only).
  * ``cudnn``: ``jax.nn.dot_product_attention`` on cuDNN, only without segment ids (it cannot
    honour them and refuses rather than ignoring them; see ``kernels/cudnn.py``).
  * ``auto``: ``resolve_impl`` picks per platform and shape.
Pallas kernels run in interpret mode automatically when the platform is CPU. The platform is
that of the mesh in context (``jax.set_mesh``, also a TPU topology mesh for AOT compilation),
else JAX's default backend.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from qwen2vl_jax.ops.blocked_attention import blocked_attention, covers, windowed_covers, windowed_rule

IMPLEMENTATIONS = ("auto", "xla", "xla_blocked", "block_sparse", "splash", "pallas_gpu", "cudnn")
PALLAS_MIN_LEN = 128  # shorter sequences (decode steps, tiny tests) are cheaper in plain XLA


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segment_ids: jax.Array | None,
    kv_segment_ids: jax.Array | None,
    causal: bool,
    impl: str = "xla",
    scale: float | None = None,
    block_q: int | None = None,
    block_kv: int | None = None,
) -> jax.Array:
    """Grouped-query attention with segment masking. Returns [B, Sq, Hq, D] in q's dtype.

    ``block_q`` / ``block_kv`` override the Pallas kernels' block sizes (tests use small ones).
    """
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention impl {impl!r} is not available; choose one of {IMPLEMENTATIONS}")
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("attention: give both q_segment_ids and kv_segment_ids, or neither")
    unsegmented = q_segment_ids is None
    same_ids = q_segment_ids is kv_segment_ids  # pallas_gpu's mha has one id array for both
    if unsegmented:
        q_segment_ids = jnp.zeros(q.shape[:2], jnp.int32)
        kv_segment_ids = jnp.zeros(k.shape[:2], jnp.int32)
    _check_shapes(q, k, v, q_segment_ids, kv_segment_ids)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    platform = current_platform()
    s_q, s_kv = q.shape[1], k.shape[1]
    auto = impl == "auto"
    if auto:
        impl = resolve_impl(platform, s_q, s_kv, causal)
    explicit_blocked = impl == "xla_blocked" and not auto and covers(s_q, s_kv, causal)
    if platform == "cpu" and (auto or explicit_blocked) and windowed_covers(s_q, s_kv, causal):
        # The windowed forward; differentiated, the implementation resolved above (unchanged).
        rule = _blocked_rule if impl == "xla_blocked" else _dense_rule
        return windowed_rule(q, k, v, q_segment_ids, kv_segment_ids, scale, causal, rule)
    blocks = {k_: v_ for k_, v_ in (("block_q", block_q), ("block_kv", block_kv)) if v_ is not None}
    if impl == "xla_blocked" and covers(s_q, s_kv, causal):
        return blocked_attention(q, k, v, q_segment_ids, kv_segment_ids, scale, causal)
    if impl in ("block_sparse", "splash", "pallas_gpu"):
        from qwen2vl_jax.kernels.mesh import run_sharded

        kernel = _pallas_kernel(impl, platform, causal, scale, same_ids or unsegmented, blocks)
        return run_sharded(kernel, q, k, v, q_segment_ids, kv_segment_ids)
    if impl == "cudnn":
        from qwen2vl_jax.kernels import cudnn

        if not unsegmented:
            cudnn.refuse_segments()
        return cudnn.cudnn_attention(q, k, v, causal=causal, scale=scale)
    return _xla_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, scale)


def _pallas_kernel(impl, platform, causal, scale, same_ids, blocks):
    """fn(q, k, v, q_seg, kv_seg) for one device; interpret mode when the platform is CPU."""
    interpret = platform == "cpu"
    if impl == "block_sparse":
        from qwen2vl_jax.kernels.block_sparse import block_sparse_attention

        variant = "gpu" if platform == "gpu" else "tpu"
        return functools.partial(block_sparse_attention, causal=causal, scale=scale, variant=variant,
                                 interpret=interpret, **blocks)
    if impl == "splash":
        from qwen2vl_jax.kernels.splash import splash_attention

        return functools.partial(splash_attention, causal=causal, scale=scale, interpret=interpret, **blocks)
    from qwen2vl_jax.kernels.pallas_gpu import pallas_gpu_attention

    if not same_ids:
        raise ValueError("attention impl 'pallas_gpu' takes one segment-id array for queries and keys: "
                         "pass the same array as q_segment_ids and kv_segment_ids")
    return lambda q, k, v, q_seg, kv_seg: pallas_gpu_attention(
        q, k, v, q_seg, causal=causal, scale=scale, interpret=interpret, **blocks)


def current_platform() -> str:
    """"cpu", "gpu" or "tpu": the mesh in context decides (AOT for a TPU topology), else the backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    platform = device.platform if device is not None else jax.default_backend()
    return "gpu" if platform in ("cuda", "rocm", "gpu") else platform


def resolve_impl(platform: str, s_q: int, s_kv: int, causal: bool) -> str:
    """What ``impl="auto"`` runs.

    TPU: our block-sparse kernel, which skips cross-segment blocks (splash and mha skip only
    causal ones), unless the sequence is too short to fill a block (decode steps); it compiles
    ahead of time for v4/v5e/v5p/v6e (tests/kernels/test_tpu_aot.py). GPU and CPU: the XLA
    paths (xla_blocked for non-causal streams) -- the Triton variant has only been lowered and
    run in interpret mode so far, never on a GPU, so it is opt-in (``impl="block_sparse"``)
    until it is measured there. CPU interpret mode is for tests, not speed.

    On CPU, both XLA paths (``auto`` and ``xla_blocked``) run their forward, when nothing is
    differentiated, as ``blocked_attention.windowed_attention`` (per query chunk one dense softmax
    over the narrowest key window that covers its block range: the padding and the other
    segments' blocks are skipped, a causal row pays about half the square) whenever it covers
    the shape; ``jax.grad`` still sees the implementation named here, forward and backward.
    """
    if platform == "tpu":
        return "block_sparse" if min(s_q, s_kv) >= PALLAS_MIN_LEN else "xla"
    return "xla" if causal else "xla_blocked"


def _dense_rule(q, k, v, q_seg, kv_seg, scale, causal):
    return _xla_attention(q, k, v, q_seg, kv_seg, causal, scale)


def _blocked_rule(q, k, v, q_seg, kv_seg, scale, causal):
    if covers(q.shape[1], k.shape[1], causal):
        return blocked_attention(q, k, v, q_seg, kv_seg, scale, causal)
    return _xla_attention(q, k, v, q_seg, kv_seg, causal, scale)


def segment_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, causal: bool) -> jax.Array:
    """bool[B, Sq, Skv]: True where the query may attend to the key."""
    mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    if causal:
        sq, skv = q_segment_ids.shape[1], kv_segment_ids.shape[1]
        q_pos = jnp.arange(sq)[:, None] + (skv - sq)
        mask = mask & (q_pos >= jnp.arange(skv)[None, :])
    return mask


def _xla_attention(q, k, v, q_seg, kv_seg, causal, scale):
    b, sq, hq, d = q.shape
    hkv = k.shape[2]
    group = hq // hkv
    # Query head h uses kv head h // group (HF repeat_kv = repeat_interleave over heads).
    qg = q.reshape(b, sq, hkv, group, d)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32) * scale
    mask = segment_mask(q_seg, kv_seg, causal)[:, None, None, :, :]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    # Softmax in float32, probabilities cast to the value dtype before @V (HF ``eager_attention_forward``).
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v, preferred_element_type=jnp.float32)
    return out.astype(q.dtype).reshape(b, sq, hq, d)


def _check_shapes(q, k, v, q_seg, kv_seg):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention: q, k, v must be [B, S, H, D]; got {q.shape}, {k.shape}, {v.shape}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k {k.shape} and v {v.shape} differ")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"attention: batch/head_dim of q {q.shape} and k {k.shape} differ")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"attention: {q.shape[2]} query heads is not a multiple of {k.shape[2]} kv heads")
    if q_seg.shape != q.shape[:2] or kv_seg.shape != k.shape[:2]:
        raise ValueError(f"attention: segment ids {q_seg.shape}/{kv_seg.shape} do not match "
                         f"q {q.shape[:2]} / kv {k.shape[:2]}")
