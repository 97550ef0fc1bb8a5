"""Slice names -> libtpu topologies, and the plan's memory arithmetic (no libtpu needed)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from qwen2vl_jax.plan.report import GIB, Memory, compile_plan
from qwen2vl_jax.plan.topology import parse_topology


@pytest.mark.parametrize("name,topology,chips,hosts,per_host", [
    ("v5e:2x2", "v5e:2x2", 4, 1, (2, 2, 1)),
    ("v5e-8", "v5e:2x4", 8, 1, (2, 4, 1)),  # the single-host 8-chip machine
    ("v5litepod-16", "v5e:4x4", 16, 4, (2, 2, 1)),
    ("v5e-256", "v5e:16x16", 256, 64, (2, 2, 1)),
    ("v5p-8", "v5:2x2x1", 4, 1, (2, 2, 1)),  # v5p counts TensorCores: 2 per chip
    ("v5p-128", "v5:4x4x4", 64, 16, (2, 2, 1)),
    ("V5P:4x4x8", "v5:4x4x8", 128, 32, (2, 2, 1)),
    ("v4-32", "v4:2x2x4", 16, 4, (2, 2, 1)),
    ("v6e:8x8", "v6e:8x8", 64, 16, (2, 2, 1)),
])
def test_names(name, topology, chips, hosts, per_host):
    t = parse_topology(name)
    assert (t.topology_name, t.chips, t.hosts, t.chips_per_host_bounds) == (topology, chips, hosts, per_host)


def test_multislice():
    t = parse_topology("v5e-16", num_slices=2)
    assert (t.chips, t.hosts) == (32, 8) and t.name.startswith("2 x v5e-16")


@pytest.mark.parametrize("name,needle", [
    ("v5e:3x3", "does not split into hosts of 2x2x1"),
    ("v5e:2x2x1", "AxB (2D torus)"),
    ("v5p:4x4", "AxBxC (3D torus)"),
    ("v5p-7", "no v5p slice of 7 TensorCores"),
    ("v5e-12", "no v5e slice of 12 chips"),
    ("h100:8", "unknown TPU"),
    ("v5e", "expected CHIP:AxB"),
])
def test_bad_names(name, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_topology(name)


def test_memory_total_counts_donated_buffers_once():
    m = Memory(arguments=10 * GIB, outputs=9 * GIB, temporaries=3 * GIB, aliased=9 * GIB, code=GIB // 2)
    assert m.total == int(13.5 * GIB)
    assert m.per_chip == m.total  # no peak reported: the sum
    # XLA's peak of live buffers (what XLA:TPU checks against the HBM) is the per-chip figure.
    assert Memory(10 * GIB, 9 * GIB, 3 * GIB, 9 * GIB, 0, peak=12 * GIB).per_chip == 12 * GIB


class _Lowered:
    def __init__(self, message):
        self.message = message

    def compile(self):
        raise jax.errors.JaxRuntimeError(self.message)


def test_out_of_memory_is_a_plan_that_does_not_fit():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("fsdp",))
    sharding = jax.sharding.NamedSharding(mesh, PartitionSpec())
    args = (jax.ShapeDtypeStruct((1024, 1024), np.float32, sharding=sharding),)  # 4 MiB
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
           "(23.54G) exceeds available HBM (15.75G).")
    compiled, memory, oom, _ = compile_plan(_Lowered(msg), args)
    assert compiled is None and oom.startswith("Ran out of memory on HBM")
    # XLA's figure is what the program needs in all, the arguments included.
    assert memory.arguments == 4 * 1024**2
    assert memory.per_chip == int(23.54 * GIB)
    assert memory.temporaries == int(23.54 * GIB) - 4 * 1024**2
    used = "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 20.5G of 15.75G hbm."
    assert compile_plan(_Lowered(used), args)[1].per_chip == int(20.5 * GIB)
    with pytest.raises(ValueError, match="XLA cannot compile"):
        compile_plan(_Lowered("INVALID_ARGUMENT: Invalid TPU program."), args)


def test_verdict_follows_xla_peak_not_the_sum():
    from qwen2vl_jax.perf.devices import device_spec
    from qwen2vl_jax.plan.report import PlanReport

    def report(memory, oom=None):
        return PlanReport(what="x", slice_name="v5e-16", chips=16, device_kind="TPU v5 lite", chip=device_spec("v5e"),
                          mesh="data=1,fsdp=16,tensor=1", details=[], memory=memory, xla_flops=None,
                          formula_flops=1e12, formula_what="f", lower_s=0.0, compile_s=0.0, oom=oom)

    # The sum of the parts (21 GiB) is over the 16 GiB, XLA's peak (15 GiB) is not: it compiled, it fits.
    lines = report(Memory(2 * GIB, GIB, 19 * GIB, GIB, 0, peak=15 * GIB)).lines()
    assert lines[-1] == "per-chip total: 15.00 GiB of 16 GiB HBM (fits)"
    assert any(line.strip().startswith("sum (upper bound)") and "21.000" in line for line in lines)
    lines = report(Memory(2 * GIB, 0, 15 * GIB, 0, 0, required=17 * GIB), oom="Ran out of memory").lines()
    assert lines[-1] == "per-chip total: 17.00 GiB of 16 GiB HBM (does not fit)"
