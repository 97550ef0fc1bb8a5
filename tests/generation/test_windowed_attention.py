"""The windowed forward of the CPU attention paths (ops/blocked_attention.windowed_attention):
equal to the dense xla oracle on packed ViT streams (with per-block padding segments), causal
rows with left padding, GQA and queries that are the tail of the keys; its window ladder; and
under jax.grad the implementation it stands in for, bitwise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen2vl_jax.layout.buckets import padding_segment_ids
from qwen2vl_jax.ops.attention import attention
from qwen2vl_jax.ops.blocked_attention import (
    WINDOW_MIN_KV,
    width_ladder,
    window_of,
    windowed_attention,
    windowed_covers,
)


def _qkv(b, sq, skv, hq, hkv, d, seed):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(s), jnp.float32)
                 for s in ((b, sq, hq, d), (b, skv, hkv, d), (b, skv, hkv, d)))


def _stream(lengths, total):
    ids = np.repeat(np.arange(len(lengths)), lengths)
    return np.concatenate([ids, padding_segment_ids(len(ids), total, len(lengths))]).astype(np.int32)


def _dense(q, k, v, qs, ks, causal):
    return attention(q, k, v, q_segment_ids=qs, kv_segment_ids=ks, causal=causal, impl="xla")


def test_width_ladder_covers_every_range_within_1_5x():
    for n in (2, 5, 8, 33, 256):
        widths = width_ladder(n)
        assert widths[0] == 1 and widths[-1] == n and list(widths) == sorted(set(widths))
        for count in range(1, n + 1):
            idx, start, _ = window_of(jnp.int32(n - count), jnp.int32(count), n)
            w = widths[int(idx)]
            assert count <= w <= max(4, 1.5 * count) + 1 and 0 <= int(start) <= n - w
            assert int(start) <= n - count  # the window still holds the range


@pytest.mark.parametrize("lengths,total", [((4096 - 512,), 4096), ((1024,) * 3, 3200), ((576,) * 4, 2560),
                                           ((36, 400, 900, 196), 1600)])
def test_packed_vit_streams_equal_dense(lengths, total):
    q, k, v = _qkv(1, total, total, 4, 4, 32, seed=total)
    seg = jnp.asarray(_stream(lengths, total)[None])
    assert windowed_covers(total, total, False)
    out = windowed_attention(q, k, v, seg, seg, 32**-0.5, False)
    assert float(jnp.abs(out - _dense(q, k, v, seg, seg, False)).max()) <= 2e-6
    # auto on CPU runs it when nothing is differentiated
    auto = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=False, impl="auto")
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(out))


@pytest.mark.parametrize("b,s,hq,hkv", [(1, 1024, 8, 2), (3, 640, 4, 4), (2, 320, 6, 2)])
def test_causal_left_padded_rows_equal_dense(b, s, hq, hkv):
    q, k, v = _qkv(b, s, s, hq, hkv, 16, seed=s)
    seg = np.ones((b, s), np.int32)
    for r in range(b):
        seg[r, : 37 * r + 5] = 0  # left padding, different per row
    seg = jnp.asarray(seg)
    out = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=True, impl="auto")
    assert float(jnp.abs(out - _dense(q, k, v, seg, seg, True)).max()) <= 2e-6


def test_queries_at_the_tail_of_the_keys_and_rows_without_keys():
    q, k, v = _qkv(2, 128, 512, 4, 2, 16, seed=3)
    kseg = jnp.asarray(np.repeat(np.array([[0, 1, 1, 2]]), 128, axis=1).repeat(2, 0), jnp.int32)
    qseg = jnp.asarray(np.array([[2] * 128, [2] * 64 + [1] * 64]), jnp.int32)
    for causal in (False, True):
        out = windowed_attention(q, k, v, qseg, kseg, 0.25, causal)
        assert float(jnp.abs(out - _dense(q, k, v, qseg, kseg, causal)).max()) <= 2e-6
    # a query whose segment has no key gets 0 (as xla_blocked and block_sparse)
    lonely = jnp.full((2, 128), 7, jnp.int32)
    assert float(jnp.abs(windowed_attention(q, k, v, lonely, kseg, 0.25, False)).max()) == 0.0


def test_short_or_odd_lengths_stay_dense():
    assert not windowed_covers(128, 128, False) and WINDOW_MIN_KV == 256
    assert not windowed_covers(300, 300, True)  # not a multiple of 64
    assert windowed_covers(320, 320, True) and windowed_covers(1, 512, False)
    assert not windowed_covers(512, 256, True)  # causal queries must be the tail of the keys


@pytest.mark.parametrize("causal,impl", [(True, "xla"), (False, "xla_blocked")])
def test_gradients_are_bitwise_those_of_the_training_rule(causal, impl):
    """auto on CPU: the windowed forward only when nothing is differentiated; jax.grad sees the
    implementation resolve_impl names (dense xla for causal, the lockstep xla_blocked pair)."""
    q, k, v = _qkv(1, 512, 512, 4, 2, 16, seed=9)
    seg = jnp.asarray(_stream((200, 180), 512)[None] if not causal else np.ones((1, 512), np.int32))

    def loss(impl):
        def f(q, k, v):
            out = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=causal, impl=impl)
            return (out * jnp.cos(jnp.arange(out.size).reshape(out.shape) * 0.1)).sum()
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

    (la, ga), (lb, gb) = loss("auto")(q, k, v), loss(impl)(q, k, v)
    assert float(la) == float(lb)
    for x, y in zip(ga, gb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
