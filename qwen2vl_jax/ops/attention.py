"""Attention dispatch: one signature for every implementation.

``attention(q, k, v, *, q_segment_ids, kv_segment_ids, causal, impl, scale)``:
  q: [B, Sq, Hq, D]; k, v: [B, Skv, Hkv, D]; segment ids int32[B, Sq] / int32[B, Skv] (or None:
  one segment per row). A query attends to a key iff their segment ids are equal (and, if
  causal, the key is not after the query; when Sq < Skv the queries are the last Sq positions).
  Query head h uses kv head h // (Hq // Hkv) (GQA, HF ``repeat_kv``). Softmax statistics are fp32.
Padding gets its own segment id, so no row is ever fully masked in practice. If one is, ``xla``
gives it a uniform softmax (HF masks with finfo.min, not -inf: spec §10.7) and ``block_sparse``
gives 0; neither gives NaN (splash would: it divides by zero).

Implementations (``IMPLEMENTATIONS``):
  * ``xla``: dense einsum/softmax in fp32 with a segment mask; the oracle, runs everywhere.
  * ``xla_blocked``: each query block visits the key blocks its segments can meet (the kernels'
    block ranges), in an XLA loop with an online softmax; sparse for sorted ids (the packed ViT
    stream), exact for any. Forward is sparse, gradient exact through the dense formula.
    Non-causal with lengths that are multiples of 128; otherwise falls back to xla.
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

from qwen2vl_jax.kernels.block_table import kv_ranges

IMPLEMENTATIONS = ("auto", "xla", "xla_blocked", "block_sparse", "splash", "pallas_gpu", "cudnn")
BLOCK = 128  # xla_blocked's block
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
    if impl == "auto":
        impl = resolve_impl(platform, s_q, s_kv, causal)
    blocks = {k_: v_ for k_, v_ in (("block_q", block_q), ("block_kv", block_kv)) if v_ is not None}
    if impl == "xla_blocked" and not causal and s_q % BLOCK == 0 and s_kv % BLOCK == 0 and s_kv > BLOCK:
        return _blocked_attention(q, k, v, q_segment_ids, kv_segment_ids, scale)
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
    """
    if platform == "tpu":
        return "block_sparse" if min(s_q, s_kv) >= PALLAS_MIN_LEN else "xla"
    return "xla" if causal else "xla_blocked"


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
    # Softmax in float32, probabilities cast to the value dtype before @V (HF eager, spec §10.6).
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _blocked_attention(q, k, v, q_seg, kv_seg, scale):
    return _blocked_forward(q, k, v, q_seg, kv_seg, scale)


def _blocked_fwd(q, k, v, q_seg, kv_seg, scale):
    return _blocked_forward(q, k, v, q_seg, kv_seg, scale), (q, k, v, q_seg, kv_seg)


def _blocked_bwd(scale, res, g):
    # Same function as the dense formula, so its gradient is exact (at dense cost).
    q, k, v, q_seg, kv_seg = res
    _, vjp = jax.vjp(lambda q_, k_, v_: _xla_attention(q_, k_, v_, q_seg, kv_seg, False, scale), q, k, v)
    return (*vjp(g), None, None)


_blocked_attention.defvjp(_blocked_fwd, _blocked_bwd)


def _blocked_forward(q, k, v, q_seg, kv_seg, scale):
    """Online-softmax attention over the key blocks each query block can meet.

    Key block j is visited by query block i iff it lies in i's range from ``kernels.block_table``
    (tight for non-decreasing ids, a superset otherwise). The loop runs max_i(span_i) times over
    all query blocks at once (fixed shapes; trip count on device).
    """
    b, s, hq, d = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    nq, nk = s // BLOCK, k.shape[1] // BLOCK
    qb = q.reshape(b, nq, BLOCK, hkv, g, d)
    kb = k.reshape(b, nk, BLOCK, hkv, d)
    vb = v.reshape(b, nk, BLOCK, hkv, d)
    qs = q_seg.reshape(b, nq, BLOCK)
    ks = kv_seg.reshape(b, nk, BLOCK)
    # The kernels' bookkeeping: a contiguous range of key blocks per query block (exact for
    # sorted ids, a superset otherwise, so any ids stay correct).
    table = kv_ranges(q_seg, kv_seg, BLOCK, BLOCK, causal=False)
    first, span, trips = table.start, table.count, table.max_count

    def body(t, carry):
        m, l, acc = carry  # m, l: [b, nq, hkv, g, BLOCK]; acc: [b, nq, BLOCK, hkv, g, d]
        j = jnp.clip(first + t, 0, nk - 1)
        kj = jnp.take_along_axis(kb, j[:, :, None, None, None], axis=1)
        vj = jnp.take_along_axis(vb, j[:, :, None, None, None], axis=1)
        sj = jnp.take_along_axis(ks, j[:, :, None], axis=1)
        scores = jnp.einsum("bnqhgd,bnkhd->bnhgqk", qb, kj, preferred_element_type=jnp.float32) * scale
        valid = (qs[:, :, :, None] == sj[:, :, None, :]) & (t < span)[:, :, None, None]
        valid = valid[:, :, None, None]
        scores = jnp.where(valid, scores, -jnp.inf)
        m_new = jnp.maximum(m, scores.max(-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.where(valid, jnp.exp(scores - m_safe[..., None]), 0.0)
        alpha = jnp.where(jnp.isfinite(m), jnp.exp(m - m_safe), 0.0)
        l = l * alpha + p.sum(-1)
        # p stays fp32 (unnormalised, so rounding it to bf16 would cost more than the dense
        # path's rounding of normalised probabilities).
        pv = jnp.einsum("bnhgqk,bnkhd->bnqhgd", p, vj.astype(jnp.float32), preferred_element_type=jnp.float32)
        acc = acc * jnp.moveaxis(alpha, -1, 2)[..., None] + pv
        return m_new, l, acc

    init = (jnp.full((b, nq, hkv, g, BLOCK), -jnp.inf, jnp.float32),
            jnp.zeros((b, nq, hkv, g, BLOCK), jnp.float32),
            jnp.zeros((b, nq, BLOCK, hkv, g, d), jnp.float32))
    _, l, acc = jax.lax.fori_loop(0, trips, body, init)
    l = jnp.moveaxis(l, -1, 2)[..., None]
    out = acc / jnp.where(l > 0, l, 1.0)  # a query with no key at all gets 0 (never in the ViT)
    return out.astype(q.dtype).reshape(b, s, hq, d)
