"""The chunked lm_head + loss equals the full-logits reference, and never holds [B, S, V] logits.

Tolerance: float32 with rtol 1e-6 (and atol 1e-6 times the largest reference magnitude, for
entries that happen to be near zero). Both sides do the same per-token float32 arithmetic; only
the order of the sums over tokens (per chunk, then across chunks) differs, which moves a float32
sum of a few dozen terms by a few ulps (~1e-7 relative), so 1e-6 leaves margin yet fails on any
real error (a wrong shift, a dropped chunk or a missing z-loss term is orders of magnitude larger).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen2vl_jax.layout.inputs import IGNORE_INDEX
from qwen2vl_jax.ops.lm_head import lm_head_logits
from qwen2vl_jax.train.loss import DEFAULT_CHUNK_SIZE, chunked_next_token_loss_sum, next_token_loss_sum

B, S, D, V = 3, 16, 8, 50
RTOL = 1e-6


def _case(tied: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((B, S, D)).astype(np.float32)
    weight = rng.standard_normal((V, D) if tied else (D, V)).astype(np.float32)
    labels = rng.integers(0, V, (B, S)).astype(np.int32)
    labels[rng.random((B, S)) < 0.3] = IGNORE_INDEX  # holes
    labels[1] = IGNORE_INDEX  # a fully ignored row
    labels[0, 1] = 7  # row 0 keeps at least its first target
    return jnp.asarray(hidden), jnp.asarray(weight), jnp.asarray(labels)


def _reference(h, w, labels, *, tied, dtype, z_loss_weight):
    return next_token_loss_sum(lm_head_logits(h, w, tied=tied, dtype=dtype), labels, z_loss_weight)


@functools.cache
def _reference_fp32(tied, z_loss_weight):
    """(total, aux), grads of the full-logits reference on ``_case(tied)``; shared by chunk sizes."""
    h, w, labels = _case(tied)
    kw = {"tied": tied, "dtype": jnp.float32, "z_loss_weight": z_loss_weight}
    return _value_and_grads(functools.partial(_reference, **kw), h, w, labels)


def _value_and_grads(loss_fn, h, w, labels, hidden_dtype=jnp.float32):
    def total(h, w):  # hidden is fp32; with bf16 compute it is cast before the head, as in the model
        return loss_fn(h.astype(hidden_dtype), w, labels)

    return jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))(h, w)


def _close(actual, expected, rtol):
    expected = np.asarray(expected, np.float64)
    atol = rtol * max(float(np.abs(expected).max()), 1e-30)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# chunk_size 4 divides S = 16, 6 does not (2 chunks + a remainder of 4), 64 exceeds S (remainder
# only). The six cases cover every pair of (tied, z-loss, chunk size) values at half the compiles.
@pytest.mark.parametrize("tied, z_loss_weight, chunk_size", [
    (True, 0.0, 4), (True, 1e-2, 6), (True, 1e-2, 64),
    (False, 0.0, 6), (False, 1e-2, 4), (False, 0.0, 64),
])
def test_chunked_matches_full_fp32(tied, z_loss_weight, chunk_size):
    h, w, labels = _case(tied)
    kw = {"tied": tied, "dtype": jnp.float32, "z_loss_weight": z_loss_weight}
    (ref, ref_aux), ref_g = _reference_fp32(tied, z_loss_weight)
    (out, aux), g = _value_and_grads(
        functools.partial(chunked_next_token_loss_sum, chunk_size=chunk_size, **kw), h, w, labels)

    expected_tokens = int((np.asarray(labels)[:, 1:] != IGNORE_INDEX).sum())
    assert int(ref_aux["tokens"]) == int(aux["tokens"]) == expected_tokens
    assert 0 < expected_tokens < B * (S - 1)
    assert float(ref_aux["ce_sum"]) > 1.0 and float(ref_aux["z_sum"]) > 1.0  # nontrivial magnitudes
    _close(out, ref, RTOL)
    _close(aux["ce_sum"], ref_aux["ce_sum"], RTOL)
    _close(aux["z_sum"], ref_aux["z_sum"], RTOL)
    _close(out, aux["ce_sum"] + z_loss_weight * aux["z_sum"], RTOL)  # z-loss enters the total
    for got, want in zip(g, ref_g):
        assert got.shape == want.shape and got.dtype == jnp.float32
        _close(got, want, RTOL)
    # The ignored row and the last position of every row take no gradient.
    assert not np.any(np.asarray(g[0])[1]) and not np.any(np.asarray(g[0])[:, -1])
    assert np.abs(np.asarray(g[0])[0]).max() > 1e-3


@pytest.mark.parametrize("tied", [True, False])
def test_chunked_matches_full_bf16_compute(tied):
    """bf16 compute (fp32 hidden and weight cast to bf16, fp32 accumulation). The logits are the
    same bf16 x bf16 -> fp32 products on both sides, so the sums agree as tightly as in fp32 (1e-6); the
    gradients pass through bf16 matmuls (per-chunk dW rounded to bf16, then summed in fp32 vs one
    bf16 rounding of the total), so dW agrees to bf16 precision only (2^-8 ~ 4e-3; 1e-2 here)."""
    h, w, labels = _case(tied, seed=1)
    kw = {"tied": tied, "dtype": jnp.bfloat16, "z_loss_weight": 1e-2}
    (ref, ref_aux), ref_g = _value_and_grads(functools.partial(_reference, **kw), h, w, labels, jnp.bfloat16)
    (out, aux), g = _value_and_grads(
        functools.partial(chunked_next_token_loss_sum, chunk_size=6, **kw), h, w, labels, jnp.bfloat16)
    assert int(aux["tokens"]) == int(ref_aux["tokens"])
    _close(out, ref, RTOL)
    _close(aux["ce_sum"], ref_aux["ce_sum"], RTOL)
    _close(aux["z_sum"], ref_aux["z_sum"], RTOL)
    # bf16 compute really happened: fp32 logits give a total well over 1e-5 away.
    fp32_total, _ = jax.jit(functools.partial(_reference, tied=tied, dtype=jnp.float32, z_loss_weight=1e-2))(
        h, w, labels)
    assert abs(float(fp32_total) - float(ref)) > 1e-5 * abs(float(ref))
    for got, want in zip(g, ref_g):
        assert got.dtype == jnp.float32
        _close(got, want, 1e-2)


def test_lm_head_logits_math():
    rng = np.random.default_rng(2)
    h = rng.standard_normal((2, 3, D)).astype(np.float32)
    emb = rng.standard_normal((V, D)).astype(np.float32)
    tied = lm_head_logits(jnp.asarray(h), jnp.asarray(emb), tied=True, dtype=jnp.float32)
    untied = lm_head_logits(jnp.asarray(h), jnp.asarray(emb.T), tied=False, dtype=jnp.float32)
    assert tied.shape == (2, 3, V) and tied.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(tied), h @ emb.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(untied), h @ emb.T, rtol=1e-5, atol=1e-5)
    low = lm_head_logits(jnp.asarray(h, jnp.bfloat16), jnp.asarray(emb), tied=True, dtype=jnp.bfloat16)
    assert low.dtype == jnp.float32
    want = np.asarray(jnp.asarray(h, jnp.bfloat16), np.float32) @ np.asarray(jnp.asarray(emb, jnp.bfloat16),
                                                                             np.float32).T
    np.testing.assert_allclose(np.asarray(low), want, rtol=1e-5, atol=1e-5)


def test_chunked_never_holds_full_logits():
    """Compiled value_and_grad temp memory: the full version needs more than one fp32 [B, S, V]
    (logits and their cotangent), the chunked one less than one, and at most a few chunk-sized
    buffers."""
    b, s, d, v = 2, 2048, 64, 32000
    full_logits = b * s * v * 4
    chunk_buf = b * DEFAULT_CHUNK_SIZE * v * 4
    args = (jax.ShapeDtypeStruct((b, s, d), jnp.float32), jax.ShapeDtypeStruct((v, d), jnp.float32),
            jax.ShapeDtypeStruct((b, s), jnp.int32))

    def full(h, w, labels):
        return _reference(h, w, labels, tied=True, dtype=jnp.float32, z_loss_weight=1e-4)[0]

    def chunked(h, w, labels):
        return chunked_next_token_loss_sum(h, w, labels, tied=True, dtype=jnp.float32, z_loss_weight=1e-4)[0]

    def temp_bytes(fn):
        compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    full_temp, chunked_temp = temp_bytes(full), temp_bytes(chunked)
    print(f"temp bytes: full {full_temp:,}, chunked {chunked_temp:,}, one [B,S,V] fp32 {full_logits:,}")
    assert full_temp > full_logits
    assert chunked_temp < full_logits
    assert chunked_temp < 4 * chunk_buf
