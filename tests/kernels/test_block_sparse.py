"""Our block-sparse kernel (both variants, Pallas interpret mode on CPU) against the xla oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from segment_layouts import batch_of_layouts, random_qkv, weighted_sum

from qwen2vl_jax.kernels.block_sparse import block_sparse_attention
from qwen2vl_jax.ops.attention import attention

# Lengths that are not multiples of the blocks (exercises sequence padding); D = 80 as in the ViT
# (exercises head_dim padding to 128); GQA with 2 query heads per kv head.
S, HQ, HKV, D = 100, 4, 2, 80
BLOCKS = {"block_q": 16, "block_kv": 32}


def _ours(variant, causal, q_seg, kv_seg):
    def f(q, k, v):
        return block_sparse_attention(q, k, v, q_seg, kv_seg, causal=causal, scale=q.shape[-1] ** -0.5,
                                      variant=variant, interpret=True, **BLOCKS)
    return f


def _xla(causal, q_seg, kv_seg):
    def f(q, k, v):
        return attention(q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg, causal=causal, impl="xla")
    return f


def _value_and_grads(f, q, k, v):
    out = jax.jit(f)(q, k, v)
    grads = jax.jit(jax.grad(lambda *a: weighted_sum(f(*a)), argnums=(0, 1, 2)))(q, k, v)
    return out, grads


def _max_diff(a, b):
    return float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max())


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("variant", ["tpu", "gpu"])
def test_forward_and_gradients_match_xla(variant, causal):
    seg = batch_of_layouts(S)
    q, k, v = random_qkv(seg.shape[0], S, S, HQ, HKV, D)
    out, grads = _value_and_grads(_ours(variant, causal, seg, seg), q, k, v)
    ref_out, ref_grads = _value_and_grads(_xla(causal, seg, seg), q, k, v)
    assert _max_diff(out, ref_out) <= 1e-5
    for name, g, r in zip("qkv", grads, ref_grads):
        assert _max_diff(g, r) <= 1e-5, f"d{name}"


@pytest.mark.parametrize("variant", ["tpu", "gpu"])
def test_fewer_queries_than_keys_causal(variant):
    """Sq < Skv (chunked prefill): the queries are the last Sq positions of the key sequence."""
    kv_seg = batch_of_layouts(S)[:2]
    q_seg = kv_seg[:, -40:]
    q, _, _ = random_qkv(2, 40, S, HQ, HKV, D, seed=1)
    _, k, v = random_qkv(2, S, S, HQ, HKV, D, seed=2)
    out, grads = _value_and_grads(_ours(variant, True, q_seg, kv_seg), q, k, v)
    ref_out, ref_grads = _value_and_grads(_xla(True, q_seg, kv_seg), q, k, v)
    assert _max_diff(out, ref_out) <= 1e-5
    for g, r in zip(grads, ref_grads):
        assert _max_diff(g, r) <= 1e-5


def test_unsorted_segment_ids_are_still_exact():
    """Ranges are a superset for arbitrary ids (e.g. right-padded rows: 1 1 1 0 0); still exact."""
    seg = jnp.asarray(np.random.default_rng(5).integers(0, 3, (2, S)), jnp.int32)
    q, k, v = random_qkv(2, S, S, HQ, HKV, D, seed=3)
    out, grads = _value_and_grads(_ours("tpu", False, seg, seg), q, k, v)
    ref_out, ref_grads = _value_and_grads(_xla(False, seg, seg), q, k, v)
    assert _max_diff(out, ref_out) <= 1e-5
    for g, r in zip(grads, ref_grads):
        assert _max_diff(g, r) <= 1e-5


def test_row_that_sees_no_key_is_zero_not_nan():
    """A caller-made query whose segment has no key: output 0 and finite gradients (xla would give
    a uniform average instead; neither gives NaN)."""
    kv_seg = jnp.zeros((1, 64), jnp.int32)
    q_seg = kv_seg.at[0, 10:20].set(7)
    q, k, v = random_qkv(1, 64, 64, 2, 2, 32, seed=4)
    f = _ours("tpu", False, q_seg, kv_seg)
    out, grads = _value_and_grads(f, q, k, v)
    assert np.all(np.asarray(out[0, 10:20]) == 0.0)
    assert all(bool(jnp.isfinite(g).all()) for g in grads)
    ref = _xla(False, q_seg, kv_seg)(q, k, v)
    assert _max_diff(out[:, 20:], ref[:, 20:]) <= 1e-5


@pytest.mark.parametrize("variant", ["tpu", "gpu"])
def test_bfloat16_is_as_accurate_as_the_xla_path(variant):
    """bf16 tolerance, justified. Scores are bf16 x bf16 products accumulated in fp32 in both
    paths, so they agree to fp32 rounding. The paths round to bf16 at different places (xla: the
    normalised probabilities before p@V; ours: the unnormalised ones) and both round the output
    to bf16, each a relative error of at most 2^-8 (8 significant bits). So (1) against fp32
    attention on the same bf16 inputs ours must be no worse than 2x the xla path's own error plus
    2^-7; (2) element-wise the two may differ by 2^-7 relative (2 output roundings) plus 2^-7
    absolute (probability rounding, outputs are averages of |v| <~ 4). Measured here: ours
    0.008, xla 0.012 from fp32; ours vs xla 0.0156 = one bf16 ulp at |out| in [2, 4)."""
    seg = batch_of_layouts(S)
    q, k, v = random_qkv(seg.shape[0], S, S, HQ, HKV, D, seed=6, dtype=jnp.bfloat16)
    oracle = _xla(True, seg, seg)(*(x.astype(jnp.float32) for x in (q, k, v)))
    ours = jax.jit(_ours(variant, True, seg, seg))(q, k, v).astype(jnp.float32)
    xla = _xla(True, seg, seg)(q, k, v).astype(jnp.float32)
    err_ours, err_xla = _max_diff(ours, oracle), _max_diff(xla, oracle)
    assert err_ours <= 2 * err_xla + 2 ** -7, (err_ours, err_xla)
    assert bool(jnp.all(jnp.abs(ours - xla) <= 2 ** -7 * jnp.abs(xla) + 2 ** -7))
