"""Attention dispatch: one signature for every implementation.

``attention(q, k, v, *, q_segment_ids, kv_segment_ids, causal, impl)``:
  q: [B, Sq, Hq, D]; k, v: [B, Skv, Hkv, D]; segment ids int32[B, Sq] / int32[B, Skv].
A query attends to a key iff their segment ids are equal (and, if causal, the key is not after
the query; when Sq < Skv the queries are the last Sq positions). Padding gets its own segment id,
so no row is ever fully masked in practice; if one is, it gets a uniform softmax, never NaN
(HF masks with finfo.min, not -inf: spec §10.7).

Implementations:
  * ``xla``: dense einsum/softmax in fp32 with a segment mask; the oracle, runs everywhere.
  * ``xla_blocked``: for segment ids that are non-decreasing along the sequence (the packed ViT
    stream is, by construction), each block of queries visits only the key blocks whose
    segment range can meet its own, in an on-device loop with an online softmax. A stream of
    many images then costs what its images cost instead of (stream length)^2. Non-causal only
    (falls back to ``xla`` otherwise). Gradients: exact, through the dense formula.
The Pallas kernels plug in here too (kernels issue).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "xla_blocked")
BLOCK = 128


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    causal: bool,
    impl: str = "xla",
    scale: float | None = None,
) -> jax.Array:
    """Grouped-query attention with segment masking. Returns [B, Sq, Hq, D] in q's dtype."""
    _check_shapes(q, k, v, q_segment_ids, kv_segment_ids)
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention impl {impl!r} is not available; choose one of {IMPLEMENTATIONS}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s_q, s_kv = q.shape[1], k.shape[1]
    if impl == "xla_blocked" and not causal and s_q % BLOCK == 0 and s_kv % BLOCK == 0 and s_kv > BLOCK:
        return _blocked_attention(q, k, v, q_segment_ids, kv_segment_ids, scale)
    return _xla_attention(q, k, v, q_segment_ids, kv_segment_ids, causal, scale)


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

    With non-decreasing segment ids, key block j is relevant to query block i iff their segment
    ranges overlap; the relevant blocks are contiguous, starting at ``first[i]``. The loop runs
    max_i(span_i) times over all query blocks at once (fixed shapes; trip count on device).
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
    rel = ((ks.max(-1)[:, None, :] >= qs.min(-1)[:, :, None])
           & (ks.min(-1)[:, None, :] <= qs.max(-1)[:, :, None]))  # [b, nq, nk]
    first = jnp.argmax(rel, axis=-1)  # [b, nq]
    span = rel.sum(-1)
    trips = span.max()

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
