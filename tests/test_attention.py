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
        attention(x, x, x, q_segment_ids=seg, kv_segment_ids=seg, causal=True, impl="flash")


def _sorted_segments(rng, total, layout):
    if layout == "one_segment":
        return np.zeros(total, np.int32)
    if layout == "single_tokens":
        lengths = [1] * 40 + [total - 40]
    elif layout == "short":
        lengths = list(rng.integers(1, 60, size=200))
    else:  # spanning block boundaries, plus padding at the end
        lengths = [300, 77, 129, 256]
    seg, start = [], 0
    for i, n in enumerate(lengths):
        n = min(int(n), total - start)
        if n <= 0:
            break
        seg += [i] * n
        start += n
    seg += [len(lengths)] * (total - start)  # padding: its own segment
    return np.asarray(seg, np.int32)


@pytest.mark.parametrize("layout", ["one_segment", "single_tokens", "short", "spanning"])
def test_blocked_equals_dense_forward_and_gradients(layout):
    import jax

    rng = np.random.default_rng(3)
    s = 1024
    q = jnp.asarray(rng.standard_normal((1, s, 4, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, s, 2, 16)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((1, s, 2, 16)), jnp.float32)
    seg = jnp.asarray(_sorted_segments(rng, s, layout))[None]

    def run(impl, q, k, v):
        return attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=False, impl=impl)

    dense, blocked = run("xla", q, k, v), run("xla_blocked", q, k, v)
    assert np.abs(np.asarray(dense) - np.asarray(blocked)).max() <= 1e-5
    grads = [jax.jit(jax.grad(lambda *a, impl=impl: (run(impl, *a) ** 2).sum(), argnums=(0, 1, 2)))(q, k, v)
             for impl in ("xla", "xla_blocked")]
    for gd, gb in zip(*grads):  # the blocked backward (ops/blocked_attention.py) vs dense autodiff
        assert np.abs(np.asarray(gd) - np.asarray(gb)).max() <= 1e-5
    # bf16: the paths round probabilities at different places; compare at bf16 resolution.
    qb, kb, vb = (x.astype(jnp.bfloat16) for x in (q, k, v))
    diff = np.abs(np.asarray(run("xla", qb, kb, vb), np.float32) - np.asarray(run("xla_blocked", qb, kb, vb), np.float32))
    assert diff.max() <= 2e-2


def test_blocked_segments_are_isolated():
    rng = np.random.default_rng(4)
    s = 512
    q, k, v = (rng.standard_normal((1, s, 2, 8)).astype(np.float32) for _ in range(3))
    seg = jnp.asarray([[0] * 200 + [1] * 200 + [2] * 112], jnp.int32)
    base = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=False, impl="xla_blocked")
    k2 = k.copy()
    k2[0, 10] += 7.0  # segment 0 only
    out = attention(q, k2, v, q_segment_ids=seg, kv_segment_ids=seg, causal=False, impl="xla_blocked")
    np.testing.assert_array_equal(np.asarray(base)[0, 200:], np.asarray(out)[0, 200:])
    assert np.abs(np.asarray(base)[0, :200] - np.asarray(out)[0, :200]).max() > 1e-4


def test_blocked_is_exact_for_unsorted_segment_ids():
    """xla_blocked visits a contiguous range of key blocks per query block (kernels.block_table):
    a superset when ids are not sorted (right-padded rows: 1 1 1 0 0), so still exact."""
    rng = np.random.default_rng(6)
    q, k, v = (jnp.asarray(rng.standard_normal((1, 512, 2, 8)), jnp.float32) for _ in range(3))
    seg = jnp.asarray(np.repeat(rng.permutation(8), 64)[None], jnp.int32)  # 8 runs, shuffled ids
    dense = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=False, impl="xla")
    blocked = attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=False, impl="xla_blocked")
    assert float(jnp.abs(dense - blocked).max()) <= 1e-5
