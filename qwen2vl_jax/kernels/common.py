"""Shared pieces of the block-sparse kernels: static config, sequence and head_dim padding."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# A finite "minus infinity" for masked scores: exp(MASK - m) underflows to 0 without ever
# producing inf - inf = NaN. Masked probabilities are additionally forced to 0 with a select, so
# a block in which a row sees no key at all contributes nothing (not exp(0) = 1).
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


class KernelConfig(NamedTuple):
    """Static (hashable) parameters of one block-sparse attention call."""

    causal: bool
    scale: float
    causal_offset: int  # key position of query 0 (Skv - Sq for the original, unpadded lengths)
    block_q: int
    block_kv: int
    interpret: bool


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def pad_sequences(q, k, v, q_seg, kv_seg, block_q: int, block_kv: int):
    """Pad q to a multiple of block_q and k/v to a multiple of block_kv (layout [B, S, H, D]).

    Padded keys get a fresh segment id (max + 1) that no real query has, so nobody attends to
    them. Padded queries copy the segment id of the last real key, so they always see at least
    one key (no empty softmax row, no NaN in any kernel); their outputs are sliced away and their
    output cotangent is zero, so they add nothing to dK/dV. Both choices keep non-decreasing
    segment ids non-decreasing, which keeps the block ranges tight.
    """
    sq, skv = q.shape[1], k.shape[1]
    pq, pk = round_up(sq, block_q) - sq, round_up(skv, block_kv) - skv
    if pk:
        fresh = jnp.maximum(q_seg.max(axis=1), kv_seg.max(axis=1)) + 1
        k = jnp.pad(k, ((0, 0), (0, pk), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pk), (0, 0), (0, 0)))
        kv_pad_ids = jnp.broadcast_to(fresh[:, None], (kv_seg.shape[0], pk))
    if pq:
        q = jnp.pad(q, ((0, 0), (0, pq), (0, 0), (0, 0)))
        q_seg = jnp.concatenate(
            [q_seg, jnp.broadcast_to(kv_seg[:, -1:], (q_seg.shape[0], pq))], axis=1)
    if pk:
        kv_seg = jnp.concatenate([kv_seg, kv_pad_ids.astype(kv_seg.dtype)], axis=1)
    return q, k, v, q_seg, kv_seg


def pad_head_dim(x: jax.Array, multiple: int) -> jax.Array:
    """Zero-pad the last axis to a multiple (zeros change neither q.k nor the used part of p@v)."""
    d = x.shape[-1]
    target = round_up(d, multiple)
    if target == d:
        return x
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, target - d)])
