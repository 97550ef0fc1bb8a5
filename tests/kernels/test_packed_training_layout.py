"""block_sparse on the packed decoder-training layout (what the training packer builds): per row,
samples with segment ids 1..k, then padding with id 0 at the end of the row; causal, GQA.

The ids are not sorted (0 after k), so the padding blocks' key ranges are the block table's
superset case, and with 32-blocks segment boundaries fall inside blocks (70, 200) as well as on
one (160). Against the xla oracle at the real positions; padding only has to stay finite and
out of reach of the real queries.
"""

import jax
import numpy as np
import pytest
from segment_layouts import packed_rows, random_qkv, weighted_sum

from qwen2vl_jax.kernels.block_sparse import block_sparse_attention
from qwen2vl_jax.ops.attention import attention

S, HQ, HKV, D = 256, 4, 2, 64
BLOCKS = {"block_q": 32, "block_kv": 32}
# Row 0: three samples (70, 90, 40) + 56 padding; row 1: one sample of 200 + 56 padding.
SEG = packed_rows([[70, 90, 40], [200]], S)
REAL = np.asarray(SEG) != 0


def _block_sparse(variant):
    if variant == "tpu":  # what impl="block_sparse" runs off GPU (interpret mode on CPU)
        return lambda q, k, v: attention(q, k, v, q_segment_ids=SEG, kv_segment_ids=SEG, causal=True,
                                         impl="block_sparse", **BLOCKS)
    return lambda q, k, v: block_sparse_attention(q, k, v, SEG, SEG, causal=True, scale=D ** -0.5,
                                                  variant=variant, interpret=True, **BLOCKS)


def _xla(q, k, v):
    return attention(q, k, v, q_segment_ids=SEG, kv_segment_ids=SEG, causal=True, impl="xla")


def _value_and_grads(f, q, k, v):
    out = jax.jit(f)(q, k, v)
    grads = jax.jit(jax.grad(lambda *a: weighted_sum(f(*a)), argnums=(0, 1, 2)))(q, k, v)
    return np.asarray(out), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("variant", ["tpu", "gpu"])
def test_packed_rows_match_xla_at_real_positions(variant):
    assert REAL.sum(1).tolist() == [200, 200]
    assert np.asarray(SEG)[0, [69, 70, 159, 160, 199, 200]].tolist() == [1, 2, 2, 3, 3, 0]
    q, k, v = random_qkv(2, S, S, HQ, HKV, D, seed=11)
    out, grads = _value_and_grads(_block_sparse(variant), q, k, v)
    ref_out, ref_grads = _value_and_grads(_xla, q, k, v)
    assert np.abs(out - ref_out)[REAL].max() <= 1e-5
    for name, g, r in zip("qkv", grads, ref_grads):
        assert np.abs(g - r)[REAL].max() <= 1e-5, f"d{name}"
    # Padding (id 0, a causal segment of its own): finite, forward and backward.
    assert np.isfinite(out[~REAL]).all()
    for name, g in zip("qkv", grads):
        assert np.isfinite(g[~REAL]).all(), f"d{name}"


def test_padding_does_not_reach_real_positions():
    """Large changes to q, k and v at every padding position leave the real positions' outputs
    and q/k/v gradients bitwise unchanged (masked probabilities are exactly 0), and do change every
    padding output (the perturbation is live). Padding keys come after every real query, so
    causality alone hides them; padding queries, though, are causally after every real key and
    only their segment id keeps them (and their cotangents) away from the real keys' dK/dV."""
    q, k, v = random_qkv(2, S, S, HQ, HKV, D, seed=12)
    rng = np.random.default_rng(13)
    pad = (~REAL)[:, :, None, None]
    q_noise = 10 * rng.standard_normal(q.shape) * pad
    kv_noise = 10 * rng.standard_normal(k.shape) * pad
    f = _block_sparse("tpu")
    out, grads = _value_and_grads(f, q, k, v)
    out2, grads2 = _value_and_grads(f, q + q_noise, k + kv_noise, v - kv_noise)
    np.testing.assert_array_equal(out[REAL], out2[REAL])
    for name, g, g2 in zip("qkv", grads, grads2):
        np.testing.assert_array_equal(g[REAL], g2[REAL], err_msg=f"d{name}")
    assert np.abs(out - out2)[~REAL].max(axis=(1, 2)).min() > 1e-3
