"""Identical layers stored stacked along a leading ``layers`` axis and run with ``lax.scan``.

Scanning compiles one layer body instead of 28/32/80 copies. The stacked params keep the
per-layer logical names with a leading ``layers`` axis (replicated by the sharding rules).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

_REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def create_stacked(make_layer: Callable[[nnx.Rngs], nnx.Module], num_layers: int,
                   rngs: nnx.Rngs, axis_name: str = "layers") -> nnx.Module:
    """Create ``num_layers`` independently initialised layers as one stacked module."""

    @nnx.split_rngs(splits=num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: axis_name})
    def create(rngs: nnx.Rngs) -> nnx.Module:
        return make_layer(rngs)

    return create(rngs)


def scan_layers(layers: nnx.Module, x: jax.Array, *args, remat: str = "none",
                collect: bool = False):
    """Run ``x = layer(x, *args)`` for every layer of a stacked module.

    Returns the final ``x`` and, if ``collect``, the stacked per-layer outputs ``[L, ...]``.
    """
    if remat not in _REMAT_POLICIES:
        raise ValueError(f"remat {remat!r} unknown; choose one of {sorted(_REMAT_POLICIES)}")
    graphdef, state = nnx.split(layers)

    def body(carry, layer_state):
        layer = nnx.merge(graphdef, layer_state)
        out = layer(carry, *args)
        return out, (out if collect else None)

    if remat != "none":
        body = jax.checkpoint(body, policy=_REMAT_POLICIES[remat], prevent_cse=False)
    return jax.lax.scan(body, x, state)
