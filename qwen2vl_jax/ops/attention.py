"""Attention dispatch: one signature for every implementation.

``attention(q, k, v, *, q_segment_ids, kv_segment_ids, causal, impl)``:
  q: [B, Sq, Hq, D]; k, v: [B, Skv, Hkv, D]; segment ids int32[B, Sq] / int32[B, Skv].
A query attends to a key iff their segment ids are equal (and, if causal, the key is not after
the query; when Sq < Skv the queries are the last Sq positions). Padding gets its own segment id,
so no row is ever fully masked in practice; if one is, it gets a uniform softmax, never NaN
(HF masks with finfo.min, not -inf: spec §10.7).

Only ``impl="xla"`` exists so far; the Pallas kernels plug in here (kernels issue).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla",)


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
    if impl != "xla":
        raise ValueError(f"attention impl {impl!r} is not available; choose one of {IMPLEMENTATIONS}")
    return _xla_attention(q, k, v, q_segment_ids, kv_segment_ids, causal,
                          q.shape[-1] ** -0.5 if scale is None else scale)


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
