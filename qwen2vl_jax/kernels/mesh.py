"""Run a Pallas attention kernel per device with ``shard_map`` when a mesh is in context.

A Pallas kernel is a custom call that XLA cannot partition: left to the auto-partitioner under
a mesh, its inputs would be all-gathered onto every device. Attention is independent per batch
row and per kv-head group, so each device runs the kernel on its own rows and heads instead:
batch over the mesh axes of the logical name ``batch``, heads over those of ``act_heads``, from
the one rules table (``sharding/rules.py``). As for every activation, an axis that does not
divide the dimension (a batch of one ViT stream) is skipped and that dimension replicated.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
from jax.sharding import PartitionSpec as P

from qwen2vl_jax.sharding.rules import mesh_axes_of


def run_sharded(fn: Callable, q, k, v, q_seg, kv_seg):
    """``fn(q, k, v, q_seg, kv_seg)`` on [B, S, H, D] / [B, S] arrays, per device under a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(q, k, v, q_seg, kv_seg)
    batch = mesh_axes_of("batch", mesh, q.shape[0]) or None
    heads = mesh_axes_of("act_heads", mesh, math.gcd(q.shape[2], k.shape[2])) or None
    qkv, ids = P(batch, None, heads, None), P(batch, None)
    # check_vma=False: Pallas kernels' outputs carry no varying-manual-axes annotation.
    return jax.shard_map(fn, mesh=mesh, in_specs=(qkv, qkv, qkv, ids, ids), out_specs=qkv,
                         check_vma=False)(q, k, v, q_seg, kv_seg)
