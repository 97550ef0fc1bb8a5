"""The GPU (Triton) kernels lower for CUDA on a CPU machine: Pallas' Triton lowering runs in
Python, so unsupported operations in our kernels fail here without a GPU. (Compiling the Triton
IR to PTX and running it needs a GPU; see tools/bench_attention.py.)"""

import jax
import jax.numpy as jnp
import pytest

from qwen2vl_jax.kernels.block_sparse import block_sparse_attention
from qwen2vl_jax.kernels.pallas_gpu import pallas_gpu_attention


def _lower(fn, hq, hkv, dtype):
    q = jax.ShapeDtypeStruct((1, 256, hq, 80), dtype)
    kv = jax.ShapeDtypeStruct((1, 256, hkv, 80), dtype)
    seg = jax.ShapeDtypeStruct((1, 256), jnp.int32)

    def grad(q, k, v, s):
        return jax.grad(lambda *a: fn(*a, s).astype(jnp.float32).sum(), argnums=(0, 1, 2))(q, k, v)

    return [jax.jit(f).trace(q, kv, kv, seg).lower(lowering_platforms=("cuda",)).as_text() for f in (fn, grad)]


@pytest.mark.parametrize("causal,hq,hkv", [(False, 4, 2), (True, 6, 2)])
def test_block_sparse_gpu_lowers_to_triton(causal, hq, hkv):
    def fn(q, k, v, s):
        return block_sparse_attention(q, k, v, s, s, causal=causal, scale=0.1, variant="gpu",
                                      block_q=64, block_kv=64)

    fwd, bwd = _lower(fn, hq, hkv, jnp.bfloat16)
    assert fwd.count("__gpu$xla.gpu.triton") == 1
    assert bwd.count("__gpu$xla.gpu.triton") == 3  # forward, dQ, dK/dV


def test_pallas_gpu_lowers_to_triton():
    def fn(q, k, v, s):
        return pallas_gpu_attention(q, k, v, s, causal=True, scale=0.1)

    fwd, bwd = _lower(fn, 4, 2, jnp.bfloat16)
    assert "xla.gpu.triton" in fwd and "xla.gpu.triton" in bwd
