"""What a plan prints: the compiled program's memory per chip against the chip's HBM, and its
FLOPs per step as XLA counts them and as our formula (``perf.flops``) counts them.

Memory (``compiled.memory_analysis()``, bytes per chip): the arguments (parameters, optimizer
state, batch), the outputs, XLA's temporaries (activations, gradients, collectives' buffers),
the outputs that reuse a donated argument's buffer (the updated parameters and optimizer state,
the decode state: counted once) and the generated code. Their sum is an upper bound: XLA's
temporaries are one allocation laid out over the whole program, and not all of it is live
while every argument is. XLA:TPU checks its own peak of live buffers
(``peak_memory_in_bytes``: arguments included) against the usable HBM when it compiles and
refuses the program when the peak is over; so a program that compiled fits, and the figure a
plan reports per chip is that peak (the sum when a backend reports no peak).

A program that does not fit never finishes compiling: XLA:TPU stops with RESOURCE_EXHAUSTED
and names the memory it needs in all, arguments included ("the total memory required for HLO
temporaries (X) exceeds available HBM", or "Used X of Y hbm"). The plan then reports that
figure, the arguments' bytes per chip computed from their shapes and shardings, the
difference as temporaries, and "does not fit".

FLOPs: XLA's ``cost_analysis()`` is of the per-chip SPMD program, but it counts the body of a
``while`` loop once, whatever its trip count (the decoder and ViT layers are one ``lax.scan``
each, the microbatches another, the loss's sequence chunks another, the decode steps a
``while_loop``), and a Pallas kernel (our attention on TPU) as no FLOPs. So for a scanned model
it undercounts by about the layer count times the microbatches; the step time at peak is
computed from our formula, and the ratio of the two is printed as the cross-check.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any

from qwen2vl_jax.perf.devices import DeviceSpec

GIB = 1024**3
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_USED = re.compile(r"Used ([\d.]+)([KMGT]?)B? of ([\d.]+)([KMGT]?)B? hbm")
_TEMPS = re.compile(r"HLO temporaries \(([\d.]+)([KMGT]?)B?\) exceeds available HBM \(([\d.]+)([KMGT]?)B?\)")


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes per chip of one compiled program."""

    arguments: int
    outputs: int
    temporaries: int
    aliased: int
    code: int
    peak: int | None = None  # XLA's own peak of the live buffers, when it reports one
    required: int | None = None  # XLA's figure for a program it refused: what it needs in all

    @property
    def total(self) -> int:
        """The sum of the parts: an upper bound on what the program holds at once."""
        return self.arguments + self.outputs + self.temporaries - self.aliased + self.code

    @property
    def per_chip(self) -> int:
        """What the program needs per chip: XLA's requirement (refused) or peak (compiled)."""
        if self.required is not None:
            return self.required
        return self.peak if self.peak else self.total


def memory_of(compiled: Any) -> Memory:
    m = compiled.memory_analysis()
    if m is None:
        raise ValueError("the compiled program reports no memory analysis")
    return Memory(arguments=int(m.argument_size_in_bytes), outputs=int(m.output_size_in_bytes),
                  temporaries=int(m.temp_size_in_bytes), aliased=int(m.alias_size_in_bytes),
                  code=int(m.generated_code_size_in_bytes), peak=getattr(m, "peak_memory_in_bytes", None))


def xla_flops_of(compiled: Any) -> float | None:
    """XLA's FLOP count of the per-chip program (None when the backend gives none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def mosaic_kernels(compiled: Any) -> int:
    """How many Pallas (Mosaic) kernel calls the compiled TPU program holds."""
    return compiled.as_text().count('custom_call_target="tpu_custom_call"')


def shard_bytes(tree: Any) -> int:
    """Bytes per chip of ShapeDtypeStruct leaves (the largest shard of each)."""
    import jax

    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * getattr(x.dtype, "itemsize", 8)
    return total


def compile_plan(lowered: Any, args: Any) -> tuple[Any, Memory, str | None, float]:
    """(compiled or None, memory per chip, XLA's out-of-memory message or None, seconds)."""
    import jax

    t0 = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text:
            raise ValueError(f"XLA cannot compile the program: {text.strip().splitlines()[0]}") from None
        seconds = time.perf_counter() - t0
        message = text.strip().splitlines()[0].replace("RESOURCE_EXHAUSTED: ", "")
        arguments = shard_bytes(args)
        found = _USED.search(text) or _TEMPS.search(text)
        required = int(float(found.group(1)) * _UNITS[found.group(2)]) if found else arguments
        return None, Memory(arguments, 0, max(0, required - arguments), 0, 0, required=required), message, seconds
    return compiled, memory_of(compiled), None, time.perf_counter() - t0


@dataclasses.dataclass
class PlanReport:
    """One planned program on one slice."""

    what: str  # e.g. "train experiments/configs/stage3_sft_7b.yaml"
    slice_name: str  # Topology.name
    chips: int
    device_kind: str
    chip: DeviceSpec
    mesh: str
    details: list[tuple[str, str]]  # (label, text) lines: model, remat, batch, ...
    memory: Memory
    xla_flops: float | None  # per chip per step (None when it did not compile)
    formula_flops: float  # per chip per step
    formula_what: str  # what the formula counted
    lower_s: float
    compile_s: float
    oom: str | None = None  # XLA's RESOURCE_EXHAUSTED message: it does not fit
    formula_linear_flops: float | None = None  # the same without the attention terms

    @property
    def fits(self) -> bool:
        return self.oom is None and self.memory.per_chip <= self.chip.hbm_gib * GIB

    def lines(self) -> list[str]:
        c, m = self.chip, self.memory
        chip = (f"{self.chips} x {self.device_kind} ({c.name}: {c.hbm_gib:g} GiB HBM, "
                f"{c.peak_bf16_tflops:g} TFLOP/s bf16 peak per chip)")
        out = [f"plan: {self.what}", f"slice: {self.slice_name}: {chip}", f"mesh: {self.mesh}"]
        out += [f"{label}: {text}" for label, text in self.details]
        out.append(f"compile: lowering {self.lower_s:.1f} s, XLA compile {self.compile_s:.1f} s")
        hbm = c.hbm_gib * GIB
        if self.oom is None:
            out.append("memory per chip (compiled.memory_analysis):")
            rows = (("arguments", m.arguments), ("outputs", m.outputs), ("temporaries", m.temporaries),
                    ("aliased (donated, counted once)", -m.aliased), ("generated code", m.code))
        else:
            out.append(f"XLA stopped compiling: {self.oom}")
            out.append("memory per chip (arguments from their shardings, temporaries = XLA's figure - arguments):")
            rows = (("arguments", m.arguments), ("temporaries", m.temporaries))
        for label, value in rows:
            out.append(f"  {label:<34} {value / GIB + 0.0:10.3f} GiB")
        if self.oom is not None:
            out.append(f"  {'needed in all (XLA)':<34} {m.per_chip / GIB:10.3f} GiB of {c.hbm_gib:g} GiB "
                       f"({100 * m.per_chip / hbm:.0f}%)")
        else:
            out.append(f"  {'sum (upper bound)':<34} {m.total / GIB:10.3f} GiB")
            if m.peak:
                out.append(f"  {'XLA peak of live buffers':<34} {m.peak / GIB:10.3f} GiB of {c.hbm_gib:g} GiB "
                           f"({100 * m.peak / hbm:.0f}%): what XLA checks against the HBM")
        peak = c.peak_bf16_tflops * 1e12
        out.append("FLOPs per chip per step:")
        out.append(f"  our formula ({self.formula_what}): {self.formula_flops:.4g}"
                   f" = {1e3 * self.formula_flops / peak:.2f} ms at peak (the step-time floor printed)")
        if self.formula_linear_flops is not None:
            out.append(f"  our formula without attention: {self.formula_linear_flops:.4g}")
        if self.xla_flops is not None:
            ratio = self.xla_flops / self.formula_flops if self.formula_flops else float("nan")
            out.append(f"  XLA cost analysis: {self.xla_flops:.4g} = {1e3 * self.xla_flops / peak:.2f} ms at peak; "
                       f"XLA / formula = {ratio:.3g} (XLA counts a loop body once, whatever the trip count, "
                       f"and Pallas kernels as 0)")
        elif self.oom is None:
            out.append("  XLA cost analysis: not reported by this backend")
        out.append(f"per-chip total: {m.per_chip / GIB:.2f} GiB of {c.hbm_gib:g} GiB HBM "
                   f"({'fits' if self.fits else 'does not fit'})")
        return out


__all__ = ["GIB", "Memory", "PlanReport", "compile_plan", "memory_of", "mosaic_kernels", "shard_bytes",
           "xla_flops_of"]
