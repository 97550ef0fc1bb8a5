"""The device mesh: axes ``data``, ``fsdp`` and ``tensor``, from a string such as
``"data=2,fsdp=-1,tensor=2"``.

* ``data``: pure data parallelism (parameters replicated over it);
* ``fsdp``: data parallelism with parameters and optimizer state sharded over it (ZeRO-3:
  XLA all-gathers each layer's weights just before use);
* ``tensor``: tensor (model) parallelism over heads, MLP units and the vocabulary.

``-1`` takes the devices the other axes leave; axes not named have size 1. Without a string
every device is on ``fsdp``. The mesh uses ``AxisType.Auto`` (GSPMD propagation from the
logical constraints: ``jax.make_mesh`` defaults to ``Explicit`` in JAX 0.10, under which a
sharded contraction needs an explicit ``out_sharding``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def parse_mesh(spec: str | None, num_devices: int | None) -> dict[str, int]:
    """Axis sizes for ``num_devices`` devices; ``ValueError`` naming what does not add up.
    With ``num_devices=None`` only the syntax is checked (-1 stays -1)."""
    if spec is None or not str(spec).strip():
        return {"data": 1, "fsdp": num_devices or -1, "tensor": 1}
    sizes: dict[str, int] = {}
    for part in str(spec).replace(" ", "").split(","):
        if "=" not in part:
            raise ValueError(f"mesh {spec!r}: {part!r} is not axis=size (axes: {', '.join(MESH_AXES)})")
        name, value = part.split("=", 1)
        if name not in MESH_AXES:
            raise ValueError(f"mesh {spec!r}: unknown axis {name!r}; the axes are {', '.join(MESH_AXES)}")
        if name in sizes:
            raise ValueError(f"mesh {spec!r}: axis {name!r} is given twice")
        try:
            size = int(value)
        except ValueError:
            raise ValueError(f"mesh {spec!r}: size of {name!r} must be an integer or -1, got {value!r}") from None
        if size == 0 or size < -1:
            raise ValueError(f"mesh {spec!r}: size of {name!r} must be >= 1 or -1, got {size}")
        sizes[name] = size
    rest = [n for n, s in sizes.items() if s == -1]
    if len(rest) > 1:
        raise ValueError(f"mesh {spec!r}: only one axis may be -1, got {rest}")
    if num_devices is None:
        return {name: sizes.get(name, 1) for name in MESH_AXES}
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if rest:
        if num_devices % fixed:
            raise ValueError(f"mesh {spec!r}: the fixed axes ({fixed} devices) do not divide the "
                             f"{num_devices} devices, so {rest[0]}=-1 has no integer size")
        sizes[rest[0]] = num_devices // fixed
    full = {name: sizes.get(name, 1) for name in MESH_AXES}
    if math.prod(full.values()) != num_devices:
        raise ValueError(f"mesh {spec!r} has {math.prod(full.values())} devices "
                         f"({'x'.join(str(full[n]) for n in MESH_AXES)}) but {num_devices} are available")
    return full


def make_mesh(spec: str | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all of them).

    Real devices go through ``jax.make_mesh`` (which orders them for the interconnect); an
    explicit list (e.g. a TPU topology's devices for ahead-of-time compilation) is reshaped in
    order, tensor innermost so tensor-parallel peers are neighbours.
    """
    sizes = parse_mesh(spec, len(devices) if devices is not None else jax.device_count())
    shape = tuple(sizes[n] for n in MESH_AXES)
    auto = (AxisType.Auto,) * len(MESH_AXES)
    if devices is None:
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def describe(mesh: Mesh) -> str:
    return ",".join(f"{name}={mesh.shape[name]}" for name in mesh.axis_names)
