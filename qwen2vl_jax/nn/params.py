"""Parameter creation with logical axis names.

Every weight carries its logical axes (``embed``, ``heads``, ``mlp``, ``vocab``, ...) as the
``out_sharding`` metadata of its ``nnx.Param``; sharding.py maps those names to mesh axes with one
rules table. ``eager_sharding=False`` keeps creation mesh-free (flax 0.12 eager
sharding raises without an active mesh: Flax FLIP 4844, "Variable eager sharding",
flax.readthedocs.io/en/latest/flip/4844-var-eager-sharding.html); the sharding is applied when
params are placed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]

normal_init: Initializer = jax.nn.initializers.normal(stddev=0.02)  # HF initializer_range
zeros_init: Initializer = jax.nn.initializers.zeros
ones_init: Initializer = jax.nn.initializers.ones


def make_param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int], axes: Sequence[str | None],
               dtype: str | jnp.dtype) -> nnx.Param:
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match shape {shape}")
    value = init(rngs.params(), tuple(shape), jnp.dtype(dtype))
    return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, spec: str,
          dtype: jnp.dtype) -> jax.Array:
    """``einsum(spec, x, kernel) + bias`` with float32 accumulation, rounded once to ``dtype``.

    Matches a PyTorch Linear/addmm: products accumulated in fp32, bias added before rounding.
    """
    y = jnp.einsum(spec, x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)
    if bias is not None:
        y = y + bias.astype(dtype).astype(jnp.float32)
    return y.astype(dtype)
