"""Which key/value blocks each query block must visit: the bookkeeping shared by every kernel.

A query block and a key block can only produce an unmasked score if some query segment id equals
some key segment id. We test the cheap necessary condition "the blocks' [min, max] segment-id
ranges overlap" (plus, when causal, "the key block starts no later than the query block ends").
For every query block the visited key blocks are then the contiguous range from the first to the
last block that passes the test. With non-decreasing segment ids (the packed ViT stream and packed
text rows are, by construction) the range is exactly the blocks that pass; with arbitrary ids it
is a superset, which is still correct because every kernel applies the element-wise mask inside a
block. Cost: O(n_q_blocks * n_kv_blocks) comparisons on device, negligible next to attention.

The same table, transposed, gives for every key block the range of query blocks that can see it
(the dK/dV pass of the backward kernels).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class BlockRanges(NamedTuple):
    """For each (row, block): visit blocks ``start .. start + count - 1`` of the other sequence.

    start, count: int32[B, n_blocks]; ``count`` is 0 for a block that meets nothing (start is
    then 0, so index maps stay in bounds). ``max_count`` (int32 scalar, >= 1) is the length of the
    kernels' innermost grid axis / loop.
    """

    start: jax.Array
    count: jax.Array
    max_count: jax.Array


def live_blocks(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, block_q: int, block_kv: int,
                causal: bool, causal_offset: int = 0) -> jax.Array:
    """bool[B, nq, nk]: query block i may meet key block j.

    Segment ids int32[B, Sq] / int32[B, Skv] with Sq % block_q == Skv % block_kv == 0. With
    ``causal``, query position p (0-based in q) sits at key position ``p + causal_offset``.
    """
    b, sq = q_segment_ids.shape
    skv = kv_segment_ids.shape[1]
    nq, nk = sq // block_q, skv // block_kv
    qs = q_segment_ids.reshape(b, nq, block_q)
    ks = kv_segment_ids.reshape(b, nk, block_kv)
    q_lo, q_hi = qs.min(-1)[:, :, None], qs.max(-1)[:, :, None]
    k_lo, k_hi = ks.min(-1)[:, None, :], ks.max(-1)[:, None, :]
    live = (k_hi >= q_lo) & (k_lo <= q_hi)
    if causal:
        last_q_pos = (jnp.arange(nq) + 1) * block_q - 1 + causal_offset
        first_k_pos = jnp.arange(nk) * block_kv
        live = live & (first_k_pos[None, :] <= last_q_pos[:, None])[None]
    return live


def ranges_from_live(live: jax.Array) -> BlockRanges:
    """Compress bool[B, n, m] into a contiguous range of m-blocks per n-block."""
    m = live.shape[-1]
    any_live = live.any(-1)
    first = jnp.argmax(live, axis=-1)
    last = m - 1 - jnp.argmax(live[..., ::-1], axis=-1)
    count = jnp.where(any_live, last - first + 1, 0).astype(jnp.int32)
    start = jnp.where(any_live, first, 0).astype(jnp.int32)
    return BlockRanges(start, count, jnp.maximum(count.max(), 1).astype(jnp.int32))


def kv_ranges(q_segment_ids, kv_segment_ids, block_q, block_kv, causal, causal_offset=0) -> BlockRanges:
    """Per query block, the key blocks to visit (forward and dQ)."""
    return ranges_from_live(live_blocks(q_segment_ids, kv_segment_ids, block_q, block_kv, causal,
                                        causal_offset))


def q_ranges(q_segment_ids, kv_segment_ids, block_q, block_kv, causal, causal_offset=0) -> BlockRanges:
    """Per key block, the query blocks that can see it (dK/dV)."""
    live = live_blocks(q_segment_ids, kv_segment_ids, block_q, block_kv, causal, causal_offset)
    return ranges_from_live(jnp.swapaxes(live, 1, 2))


def blocks_visited(q_segment_ids, kv_segment_ids, block_q, block_kv, causal, causal_offset=0) -> jax.Array:
    """Total key blocks the forward pass computes, per head (int32 scalar): sum of ``count``."""
    return kv_ranges(q_segment_ids, kv_segment_ids, block_q, block_kv, causal, causal_offset).count.sum()
