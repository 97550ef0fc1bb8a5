"""The xla attention path against a direct numpy computation."""

import jax.numpy as jnp
import numpy as np
import pytest

from qwen2vl_jax.ops.attention import attention


def _reference(q, k, v, qs, ks, causal):
    b, sq, hq, d = q.shape
    group = hq // k.shape[2]
    out = np.zeros_like(q, dtype=np.float64)
    for bi in range(b):
        for h in range(hq):
            s = q[bi, :, h] @ k[bi, :, h // group].T / np.sqrt(d)
            allowed = qs[bi][:, None] == ks[bi][None, :]
            if causal:
                allowed &= np.arange(sq)[:, None] >= np.arange(k.shape[1])[None, :]
            s = np.where(allowed, s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            out[bi, :, h] = (p / p.sum(-1, keepdims=True)) @ v[bi, :, h // group]
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_gqa_segments_against_numpy(causal):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 11, 6, 8)).astype(np.float32)
    k = rng.standard_normal((2, 11, 2, 8)).astype(np.float32)
    v = rng.standard_normal((2, 11, 2, 8)).astype(np.float32)
    seg = np.array([[1, 1, 1, 2, 2, 3, 3, 3, 3, 0, 0], [0, 0, 5, 5, 5, 5, 5, 6, 6, 6, 6]], np.int32)
    got = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), q_segment_ids=jnp.asarray(seg),
                    kv_segment_ids=jnp.asarray(seg), causal=causal)
    np.testing.assert_allclose(np.asarray(got), _reference(q, k, v, seg, seg, causal), atol=2e-6)


def test_segments_are_isolated():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 8, 2, 4)).astype(np.float32)
    k = rng.standard_normal((1, 8, 2, 4)).astype(np.float32)
    v = rng.standard_normal((1, 8, 2, 4)).astype(np.float32)
    seg = jnp.asarray([[0, 0, 0, 0, 1, 1, 1, 1]], jnp.int32)
    base = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=False)
    k2, v2 = k.copy(), v.copy()
    k2[0, 1] += 5.0
    v2[0, 1] += 5.0  # change a key/value of segment 0 only
    changed = attention(q, k2, v2, q_segment_ids=seg, kv_segment_ids=seg, causal=False)
    np.testing.assert_array_equal(np.asarray(base)[0, 4:], np.asarray(changed)[0, 4:])
    assert np.abs(np.asarray(base)[0, :4] - np.asarray(changed)[0, :4]).max() > 1e-3


def test_bad_shapes_are_named():
    x = jnp.zeros((1, 4, 3, 8))
    seg = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match="not a multiple"):
        attention(x, jnp.zeros((1, 4, 2, 8)), jnp.zeros((1, 4, 2, 8)), q_segment_ids=seg,
                  kv_segment_ids=seg, causal=True)
    with pytest.raises(ValueError, match="not available"):
        attention(x, x, x, q_segment_ids=seg, kv_segment_ids=seg, causal=True, impl="splash")
