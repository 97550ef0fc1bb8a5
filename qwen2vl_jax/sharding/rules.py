"""THE table from logical axis names to mesh axes, and its resolution into PartitionSpecs.

Every parameter carries logical axis names (``nn/params.py``); activations are constrained by
logical name at block boundaries (``constrain``). Nothing else in the code names a mesh axis.

Rules (what the table says, beyond plain lookup):

* A parameter dimension a mesh axis cannot divide is an error naming the parameter, the
  dimension, its size and the axis (7B's 28 query heads on ``tensor=8``): never a silent
  replication.
* KV heads (2B: 2, 7B: 4, 72B: 8) when ``tensor`` exceeds them: if ``tensor`` is a multiple of
  the kv-head count, the k/v projections are replicated over ``tensor`` and each kv head is
  repeated ``tensor / kv_heads`` times before attention and the KV cache, so every tensor shard
  holds exactly the one kv head its query heads use. This is vLLM's rule for
  ``tp > num_kv_heads`` (each rank keeps a copy of the kv head it needs) and MaxText's; GQA
  semantics are unchanged because query head h still reads kv head ``h // (H / kv_heads)``.
  Any other combination is an error.
* Activations: a mesh axis that does not divide an activation dimension is skipped for that
  dimension (a serving batch of 1 on ``fsdp=8`` runs replicated); activations never error.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence

import jax
from jax.sharding import PartitionSpec

# logical name -> mesh axes it is split over (in order). () = replicated.
RULES: dict[str, tuple[str, ...]] = {
    # batch-like: examples, and the packing groups of a training step (one vision stream each)
    "batch": ("data", "fsdp"),
    "groups": ("data", "fsdp"),
    # parameters: stacked-layer axes, text decoder, vision tower, merger
    "layers": (),
    "vision_layers": (),
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "mlp": ("tensor",),
    "vision_patch": (),
    "vision_embed": ("fsdp",),
    "vision_heads": ("tensor",),
    "vision_head_dim": (),
    "vision_mlp": ("tensor",),
    "vision_merge": ("fsdp",),
    "vision_merge_mlp": ("tensor",),
    # activations
    "sequence": (),
    "act_embed": (),
    "act_heads": ("tensor",),
    "act_kv_heads": ("tensor",),
    "act_mlp": ("tensor",),
    "act_vocab": ("tensor",),
    "patches": (),  # the packed patch stream (in training it sits inside a sharded group)
    "cache_slots": (),
}


_RESERVED = threading.local()


@contextlib.contextmanager
def reserved_axes(axes: Sequence[str] | None) -> Iterator[None]:
    """While tracing under ``jax.vmap(..., spmd_axis_name=axes)``: those mesh axes already split
    the vmapped dimension, so activation constraints inside must not use them again."""
    previous = getattr(_RESERVED, "axes", frozenset())
    _RESERVED.axes = previous | frozenset(axes or ())
    try:
        yield
    finally:
        _RESERVED.axes = previous


def _reserved() -> frozenset:
    return getattr(_RESERVED, "axes", frozenset())


def _mesh_size(mesh, axes: Sequence[str]) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def _lookup(name: str | None) -> tuple[str, ...]:
    if name is None:
        return ()
    if name not in RULES:
        raise ValueError(f"sharding: logical axis {name!r} is not in the rules table "
                         f"(qwen2vl_jax/sharding/rules.py)")
    return RULES[name]


def kv_head_replication(num_kv_heads: int, mesh=None) -> int:
    """How many times each kv head is repeated on this mesh (1 unless ``tensor`` > kv heads)."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh is None or mesh.empty or "tensor" not in mesh.axis_names:
        return 1
    t = mesh.shape["tensor"]
    if t <= num_kv_heads or num_kv_heads <= 0:
        return 1
    if t % num_kv_heads:
        raise ValueError(f"sharding: {num_kv_heads} kv heads on tensor={t}: tensor must divide the kv heads "
                         f"or be a multiple of them (then each kv head is repeated tensor/kv_heads times)")
    return t // num_kv_heads


def param_spec(logical: Sequence[str | None], shape: Sequence[int], mesh, what: str) -> PartitionSpec:
    """PartitionSpec of a parameter; ``ValueError`` if the mesh cannot divide a dimension."""
    if len(logical) != len(shape):
        raise ValueError(f"sharding: {what} has logical axes {tuple(logical)} for shape {tuple(shape)}")
    out, used = [], set()
    for name, size in zip(logical, shape):
        axes = tuple(a for a in _lookup(name) if a in mesh.axis_names and mesh.shape[a] > 1)
        if name == "kv_heads" and axes and size % _mesh_size(mesh, axes) and kv_head_replication(size, mesh) > 1:
            axes = ()  # replicated, and repeated per tensor shard in the decoder (module docstring)
        for a in axes:
            if a in used:
                raise ValueError(f"sharding: {what} would use mesh axis {a!r} twice ({tuple(logical)})")
            used.add(a)
        if axes and size % _mesh_size(mesh, axes):
            detail = ", ".join(f"{a}={mesh.shape[a]}" for a in axes)
            raise ValueError(f"sharding: cannot split {what} dimension {name!r} of size {size} over mesh "
                             f"axis {detail}: {size} is not divisible by {_mesh_size(mesh, axes)}")
        out.append(axes[0] if len(axes) == 1 else (axes or None))
    return PartitionSpec(*out)


def activation_spec(logical: Sequence[str | None], shape: Sequence[int], mesh) -> PartitionSpec:
    """PartitionSpec of an activation: like ``param_spec`` but an axis that does not divide its
    dimension (or is already used, or reserved by an enclosing vmap) is skipped instead of raising."""
    out, used = [], set(_reserved())
    for name, size in zip(logical, shape):
        axes = []
        for a in _lookup(name):
            if a in mesh.axis_names and a not in used and mesh.shape[a] > 1 \
                    and size % (_mesh_size(mesh, axes) * mesh.shape[a]) == 0:
                axes.append(a)
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else (tuple(axes) or None))
    return PartitionSpec(*out)


def mesh_axes_of(logical: str, mesh, size: int | None = None) -> tuple[str, ...]:
    """The mesh axes ``logical`` maps to on ``mesh`` (skipping size-1 axes and, with ``size``,
    the axes that do not divide it), e.g. for shard_map specs and vmap's ``spmd_axis_name``."""
    spec = activation_spec((logical,), (size if size is not None else math.prod(mesh.shape.values()),), mesh)
    axes = spec[0]
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def constrain(x: jax.Array, logical: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names under the mesh in context; a no-op without
    one (single-device code stays mesh-free)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, activation_spec(logical, x.shape, mesh))
