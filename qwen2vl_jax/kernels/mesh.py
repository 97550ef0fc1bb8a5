"""Run a Pallas attention kernel per device with ``shard_map`` when a mesh is in context.

A Pallas kernel is a custom call that XLA cannot partition: left to the auto-partitioner under
a mesh, its inputs would be all-gathered onto every device. Attention is independent per batch
row and per kv-head group, so each device runs the kernel on its own rows and heads instead.
Batch is split over the mesh axes the logical name ``batch`` maps to, heads over those of
``heads`` (flax logical-axis rules in context). Without rules the batch is split over every mesh
axis (plain data parallelism) and heads are not. An axis whose size does not divide the
dimension is dropped (that dimension is then replicated), never an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
from jax.sharding import PartitionSpec as P


def run_sharded(fn: Callable, q, k, v, q_seg, kv_seg):
    """``fn(q, k, v, q_seg, kv_seg)`` on [B, S, H, D] / [B, S] arrays, per device under a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(q, k, v, q_seg, kv_seg)
    batch = _axes_for("batch", mesh, q.shape[0])
    heads = _axes_for("heads", mesh, math.gcd(q.shape[2], k.shape[2]))
    qkv, ids = P(batch, None, heads, None), P(batch, None)
    # check_vma=False: Pallas kernels' outputs carry no varying-manual-axes annotation (JAX_NOTES).
    return jax.shard_map(fn, mesh=mesh, in_specs=(qkv, qkv, qkv, ids, ids), out_specs=qkv,
                         check_vma=False)(q, k, v, q_seg, kv_seg)


def _axes_for(logical: str, mesh, size: int):
    import flax.linen as nn

    rules = nn.get_logical_axis_rules()
    if rules:
        axes = nn.logical_to_mesh_axes((logical,), rules)[0]
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    elif logical == "batch":
        axes = tuple(name for name in mesh.axis_names if mesh.shape[name] > 1)
    else:
        axes = ()
    axes = tuple(a for a in axes if a in mesh.axis_names)
    if not axes or size % math.prod(mesh.shape[a] for a in axes):
        return None
    return axes
