"""TPU slice names -> libtpu topology descriptions, with their host layout.

Accepted names (case-insensitive):

* ``CHIP:AxB`` (v5e, v6e: a 2D torus) or ``CHIP:AxBxC`` (v4, v5p: 3D), in chips, e.g.
  ``v5e:16x16`` or ``v5p:4x4x8``;
* the Cloud TPU accelerator types ``v5e-256`` (also ``v5litepod-256``), ``v6e-64``, ``v5p-128``,
  ``v4-32``: the number counts chips on v5e / v6e and TensorCores (two per chip) on v4 / v5p,
  so ``v5p-128`` is the 64 chips of ``v5p:4x4x4``.

A slice larger than one host is several processes, and XLA compiles a multi-host program only
for a topology that says how its chips split into hosts (``chips_per_host_bounds``): 4 chips
(2x2x1) per host on v4 / v5p and on multi-host v5e / v6e slices, 8 (2x4x1) on the single-host
v5e / v6e 8-chip machines, as Cloud TPU builds them. v4 and v5p chips run as one JAX device
each (``megacore``: both TensorCores), the way the training loop sees them. ``num_slices`` > 1
describes a multislice job (slices joined over the data-centre network); the mesh's outer axes
then span the slices.

Compiling for a topology needs libtpu (``pip install 'jax[tpu]'``, the ``[tpu-aot]`` extra), not
a TPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

# libtpu reads these when it is first loaded. Its lockfile keeps one process per machine on a
# TPU; planning drives no TPU, so it must neither block nor be blocked by another process. A
# worker list stops the warnings it prints on a machine that is not a TPU VM.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # our short name (perf.devices), e.g. "v5p"
    libtpu: str  # libtpu's topology prefix
    dims: int  # 2 (torus AxB) or 3 (AxBxC)
    megacore: bool  # two TensorCores per chip, one JAX device
    shapes: dict[int, str]  # chips -> the Cloud TPU slice shape, for the accelerator-type names


_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("v4", "v4", 3, True, _SHAPES_3D),
    Family("v5e", "v5e", 2, False, _SHAPES_2D),
    Family("v5p", "v5", 3, True, _SHAPES_3D),
    Family("v6e", "v6e", 2, False, _SHAPES_2D),
)}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e", "v5": "v5p"}


@dataclasses.dataclass(frozen=True)
class Topology:
    """One TPU slice (or several identical ones), ready for ``get_topology_desc``."""

    family: str  # v4 / v5e / v5p / v6e
    shape: tuple[int, ...]  # chips per torus dimension
    num_slices: int = 1

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.shape)

    @property
    def chips(self) -> int:
        return self.chips_per_slice * self.num_slices

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        if FAMILIES[self.family].dims == 2:
            if self.shape == (1, 1):
                return (1, 1, 1)
            if self.shape == (2, 4):
                return (2, 4, 1)  # the single-host 8-chip machine
        return (2, 2, 1)

    @property
    def hosts(self) -> int:
        return self.chips // math.prod(self.chips_per_host_bounds)

    @property
    def topology_name(self) -> str:
        return f"{FAMILIES[self.family].libtpu}:{'x'.join(map(str, self.shape))}"

    @property
    def name(self) -> str:
        """``v5p-128 (4x4x4, 16 hosts)``-style description."""
        fam = FAMILIES[self.family]
        count = self.chips_per_slice * (2 if fam.megacore else 1)
        slices = f"{self.num_slices} x " if self.num_slices > 1 else ""
        host_word = "host" if self.hosts == 1 else "hosts"
        return f"{slices}{self.family}-{count} ({'x'.join(map(str, self.shape))}, {self.hosts} {host_word})"


def parse_topology(text: str, num_slices: int = 1) -> Topology:
    """``Topology`` of a slice name (module docstring); ``ValueError`` saying what is wrong."""
    raw = str(text).strip().lower()
    if num_slices < 1:
        raise ValueError(f"--num-slices must be >= 1, got {num_slices}")
    known = ", ".join(sorted(FAMILIES))
    m = re.fullmatch(r"([a-z0-9]+?)(?::([0-9x]+)|-([0-9]+))", raw)
    if not m:
        raise ValueError(f"topology {text!r}: expected CHIP:AxB[xC] (e.g. v5e:4x4, v5p:4x4x4) or a Cloud "
                         f"TPU type such as v5e-16 / v5p-128; chips: {known}")
    chip = _ALIASES.get(m.group(1), m.group(1))
    if chip not in FAMILIES:
        raise ValueError(f"topology {text!r}: unknown TPU {m.group(1)!r}; chips: {known}")
    fam = FAMILIES[chip]
    if m.group(2) is not None:
        try:
            shape = tuple(int(x) for x in m.group(2).split("x"))
        except ValueError:
            raise ValueError(f"topology {text!r}: {m.group(2)!r} is not AxB or AxBxC") from None
        if len(shape) != fam.dims or min(shape) < 1:
            want = "AxBxC (3D torus)" if fam.dims == 3 else "AxB (2D torus)"
            raise ValueError(f"topology {text!r}: {chip} slices are {want}, got {m.group(2)!r}")
    else:
        count = int(m.group(3))
        chips, odd = divmod(count, 2) if fam.megacore else (count, 0)
        if odd or chips not in fam.shapes:
            unit = "TensorCores (2 per chip)" if fam.megacore else "chips"
            sizes = ", ".join(f"{chip}-{c * (2 if fam.megacore else 1)}" for c in fam.shapes)
            raise ValueError(f"topology {text!r}: no {chip} slice of {count} {unit}; known: {sizes} "
                             f"(or give the shape, e.g. {chip}:{fam.shapes[max(fam.shapes)]})")
        shape = tuple(int(x) for x in fam.shapes[chips].split("x"))
    topo = Topology(chip, shape, num_slices)
    bounds = topo.chips_per_host_bounds
    if any(s % b for s, b in zip(shape + (1,) * (3 - len(shape)), bounds)):
        raise ValueError(f"topology {text!r}: {'x'.join(map(str, shape))} does not split into hosts of "
                         f"{'x'.join(map(str, bounds))} chips")
    return topo


def abstract_mesh(spec: str | None, chips: int):
    """The ``(data, fsdp, tensor)`` mesh shape of ``spec`` over ``chips`` devices, without devices:
    parameter shardings can be checked against it before libtpu is loaded."""
    from jax.sharding import AbstractMesh, AxisType

    from qwen2vl_jax.sharding.mesh import MESH_AXES, parse_mesh

    sizes = parse_mesh(spec, chips)
    return AbstractMesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def check_shardings(cfg, runtime, spec: str | None, chips: int) -> None:
    """``ValueError`` when the mesh does not divide the chips or cannot split a parameter."""
    from flax import nnx

    from qwen2vl_jax.model import abstract_model
    from qwen2vl_jax.sharding.params import param_specs

    param_specs(nnx.state(abstract_model(cfg, runtime), nnx.Param), abstract_mesh(spec, chips))


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def topology_devices(topo: Topology) -> list:
    """The slice's (abstract) devices, from libtpu; no TPU needed."""
    if not libtpu_available():
        raise ValueError("planning for a TPU needs libtpu: pip install 'jax[tpu]' (the [tpu-aot] extra)")
    import jax
    from jax.experimental import topologies

    fam = FAMILIES[topo.family]
    try:
        desc = topologies.get_topology_desc(
            platform="tpu", topology_name=topo.topology_name,
            chip_config_name="megacore" if fam.megacore else "default",
            chips_per_host_bounds=topo.chips_per_host_bounds, num_slices=topo.num_slices)
    except jax.errors.JaxRuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"libtpu cannot build topology {topo.topology_name}: {first}") from None
    devices = list(desc.devices)
    if len(devices) != topo.chips:
        raise ValueError(f"topology {topo.topology_name}: libtpu reports {len(devices)} devices, expected "
                         f"{topo.chips} chips")
    return devices


__all__ = ["FAMILIES", "Topology", "abstract_mesh", "check_shardings", "libtpu_available", "parse_topology",
           "topology_devices"]
