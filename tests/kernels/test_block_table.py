"""Block bookkeeping: never misses a block with an unmasked pair, and is tight for packed streams."""

import jax.numpy as jnp
import numpy as np
import pytest
from segment_layouts import batch_of_layouts

from qwen2vl_jax.kernels.block_table import blocks_visited, kv_ranges, live_blocks, q_ranges


def _exact_live(q_seg, kv_seg, bq, bkv, causal, offset=0):
    """Brute force: block pair (i, j) holds at least one allowed (query, key) pair."""
    q_seg, kv_seg = np.asarray(q_seg), np.asarray(kv_seg)
    allowed = q_seg[:, :, None] == kv_seg[:, None, :]
    if causal:
        allowed &= (np.arange(q_seg.shape[1])[:, None] + offset) >= np.arange(kv_seg.shape[1])[None, :]
    b, sq, skv = allowed.shape
    return allowed.reshape(b, sq // bq, bq, skv // bkv, bkv).any(axis=(2, 4))


@pytest.mark.parametrize("causal", [False, True])
def test_live_blocks_are_exact_for_packed_streams(causal):
    """Ids 0, 1, 2, ... in order (the packed ViT stream, packed text rows): the range test is exact
    and the live blocks of every query block are contiguous, so the ranges count exactly them."""
    seg = batch_of_layouts(96)
    live = np.asarray(live_blocks(seg, seg, 16, 32, causal))
    np.testing.assert_array_equal(live, _exact_live(seg, seg, 16, 32, causal))
    table = kv_ranges(seg, seg, 16, 32, causal)
    np.testing.assert_array_equal(np.asarray(table.count), live.sum(-1))
    for r in range(seg.shape[0]):
        for i in range(live.shape[1]):
            js = np.flatnonzero(live[r, i])
            assert js[0] == table.start[r, i] and js[-1] == table.start[r, i] + table.count[r, i] - 1


def test_ranges_cover_every_allowed_pair_for_arbitrary_ids():
    rng = np.random.default_rng(0)
    q_seg = jnp.asarray(rng.integers(0, 4, (3, 64)), jnp.int32)
    kv_seg = jnp.asarray(rng.integers(0, 4, (3, 96)), jnp.int32)
    exact = _exact_live(q_seg, kv_seg, 16, 16, causal=True, offset=32)
    table = kv_ranges(q_seg, kv_seg, 16, 16, True, causal_offset=32)
    start, count = np.asarray(table.start), np.asarray(table.count)
    for r, i, j in zip(*np.nonzero(exact)):
        assert start[r, i] <= j < start[r, i] + count[r, i]


def test_q_ranges_are_the_transpose():
    seg = batch_of_layouts(96)
    live = np.asarray(live_blocks(seg, seg, 16, 32, True))
    table = q_ranges(seg, seg, 16, 32, True)
    np.testing.assert_array_equal(np.asarray(table.count), live.sum(1))
    assert int(table.max_count) == live.sum(1).max()


def test_a_block_that_meets_nothing_has_count_zero_and_start_in_bounds():
    q_seg = jnp.asarray([[5] * 16 + [0] * 16], jnp.int32)
    kv_seg = jnp.zeros((1, 32), jnp.int32)
    table = kv_ranges(q_seg, kv_seg, 16, 16, False)
    assert table.count.tolist() == [[0, 2]] and table.start.tolist() == [[0, 0]]
    assert int(table.max_count) == 2


def test_vit_stream_of_16_images_visits_one_sixteenth_of_dense():
    """Shape (a) target: 16 images x 1,024 patches, 128-blocks: at most 1/12 of dense (ideal 1/16)."""
    seg = jnp.repeat(jnp.arange(16, dtype=jnp.int32), 1024)[None]
    visited = int(blocks_visited(seg, seg, 128, 128, False))
    dense = (seg.shape[1] // 128) ** 2
    assert visited * 12 <= dense
    assert visited == dense // 16

