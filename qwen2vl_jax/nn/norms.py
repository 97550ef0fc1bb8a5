"""Normalisation layers with the exact precision rules of the reference (docs/numerics.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen2vl_jax.nn.params import make_param, ones_init, zeros_init


class RMSNorm(nnx.Module):
    """Qwen2RMSNorm: normalise in fp32, cast to the input dtype, THEN multiply by the weight."""

    def __init__(self, dim: int, eps: float, axis_name: str, *, param_dtype: str, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = make_param(rngs, ones_init, (dim,), (axis_name,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        weight = self.scale[...]
        # In bf16 the product runs in bf16 (weight and normalised input both bf16), like torch.
        return weight.astype(x.dtype) * x32.astype(x.dtype)


class LayerNorm(nnx.Module):
    """torch LayerNorm: statistics and affine in fp32, one rounding to the input dtype."""

    def __init__(self, dim: int, eps: float, axis_name: str, *, param_dtype: str, rngs: nnx.Rngs):
        self.eps = eps
        self.scale = make_param(rngs, ones_init, (dim,), (axis_name,), param_dtype)
        self.bias = make_param(rngs, zeros_init, (dim,), (axis_name,), param_dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)
