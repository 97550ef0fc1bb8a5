"""Sharding: the ``(data, fsdp, tensor)`` mesh (mesh.py), THE logical-axis rules table and
``constrain`` (rules.py), parameter and optimizer-state shardings (params.py), and placement of
host tensors directly onto their shards (placement.py)."""

from qwen2vl_jax.sharding.mesh import MESH_AXES, describe, make_mesh, parse_mesh
from qwen2vl_jax.sharding.rules import RULES, constrain, kv_head_replication, mesh_axes_of

__all__ = ["MESH_AXES", "RULES", "constrain", "describe", "kv_head_replication", "make_mesh", "mesh_axes_of",
           "parse_mesh"]
