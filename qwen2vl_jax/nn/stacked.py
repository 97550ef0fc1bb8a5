"""Identical layers stored stacked along a leading ``layers`` axis and run with ``lax.scan``.

Scanning compiles one layer body instead of 28/32/80 copies. The stacked params keep the
per-layer logical names with a leading ``layers`` axis (replicated by the sharding rules).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from qwen2vl_jax.nn.remat import remat as with_remat


def create_stacked(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int,
                   rngs: nnx.Rngs, axis_name: str = "layers") -> nnx.Module:
    """Create ``num_layers`` independently initialised layers as one stacked module."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: axis_name})
    def create(rngs: nnx.Rngs) -> nnx.Module:
        return make_layer(rngs)

    return create(rngs)


def scan_layers(layers: nnx.Module, fn: Callable[[nnx.Module, Any, Any], tuple[Any, Any]], carry: Any,
                xs: Any = None, *, remat: str = "none") -> tuple[Any, Any]:
    """``carry, y = fn(layer, carry, x)`` for every layer of a stacked module, in order, where
    ``x`` is the layer's slice of the pytree ``xs`` (None when ``xs`` is None).

    Returns the final carry and the per-layer ``y`` stacked along a leading axis, like
    ``lax.scan``. ``remat`` names the rematerialisation policy of one layer (``nn/remat.py``).
    """
    graphdef, state = nnx.split(layers)

    def body(carry, layer_xs):
        layer_state, x = layer_xs
        return fn(nnx.merge(graphdef, layer_state), carry, x)

    return jax.lax.scan(with_remat(body, remat), carry, (state, xs))
