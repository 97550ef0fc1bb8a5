"""Rotary position embeddings: the ViT's 2D rotary and the decoder's M-RoPE (docs/mrope.md).

Both use the half-split ``rotate_half`` pairing (dim c with dim c + d/2), not interleaved pairs.
Angles are always computed in float32 from float32 inverse frequencies (docs/numerics.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(dim: int, theta: float) -> np.ndarray:
    """``1 / theta^(2k/dim)`` for k < dim/2, as float32 (HF's ``inv_freq`` buffer)."""
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x*cos + rotate_half(x)*sin`` in the dtype of its inputs (caller chooses the precision)."""
    return x * cos + rotate_half(x) * sin


def vision_rotary_cos_sin(pos_hw: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables of the ViT's 2D rotary.

    pos_hw: int32[N, 2] (row, col) of each patch (layout.vision_position_ids).
    Returns float32[N, head_dim] each; head-dim layout [h, w, h, w] (docs/numerics.md, Vision rotary).
    """
    inv_freq = jnp.asarray(inverse_frequencies(head_dim // 2, theta))  # [head_dim/4]
    pos = pos_hw.astype(jnp.float32)
    ang = jnp.concatenate([pos[:, :1] * inv_freq, pos[:, 1:2] * inv_freq], axis=-1)  # [N, d/2]
    emb = jnp.concatenate([ang, ang], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_vision_rotary(q: jax.Array, k: jax.Array, cos: jax.Array, sin: jax.Array):
    """Rotate q, k ``[..., N, heads, d]`` in float32 and cast back (HF ``apply_rotary_pos_emb_vision``)."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    q_rot = apply_rotary(q.astype(jnp.float32), cos, sin).astype(q.dtype)
    k_rot = apply_rotary(k.astype(jnp.float32), cos, sin).astype(k.dtype)
    return q_rot, k_rot


def mrope_frequency_owner(mrope_section: tuple[int, ...]) -> np.ndarray:
    """For each of the head_dim/2 frequencies, which position stream (0=t, 1=h, 2=w) drives it."""
    return np.repeat(np.arange(len(mrope_section)), mrope_section)


def mrope_cos_sin(
    position_ids: jax.Array, head_dim: int, theta: float, mrope_section: tuple[int, ...],
    dtype: jnp.dtype,
) -> tuple[jax.Array, jax.Array]:
    """cos/sin of M-RoPE.

    position_ids: int[3, B, S] (temporal, height, width streams; layout.get_rope_index).
    Returns [B, S, head_dim] each, computed in float32 and cast to ``dtype`` (docs/numerics.md):
    frequency j uses stream ``owner(j)`` and fills dims j and j + head_dim/2.
    """
    inv_freq = jnp.asarray(inverse_frequencies(head_dim, theta))  # [head_dim/2]
    owner = mrope_frequency_owner(mrope_section)
    pos = position_ids.astype(jnp.float32)[owner]  # [head_dim/2, B, S]: stream per frequency
    ang = jnp.moveaxis(pos, 0, -1) * inv_freq  # [B, S, head_dim/2]
    emb = jnp.concatenate([ang, ang], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)
