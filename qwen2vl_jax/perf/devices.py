"""The accelerator table: dense bf16 peak, HBM bandwidth and HBM size of one JAX device.

One :class:`DeviceSpec` per chip, looked up by the ``jax.Device.device_kind`` string JAX reports
(normalised: lower case, single spaces) or by a short name (``"v5e"``, ``"h100"``...).

Matching a device kind (:func:`device_spec`):

1. exactly, against the kinds in ``KINDS``;
2. otherwise the longest entry of ``KINDS`` whose words are the first words of the kind, and
   only when every remaining word describes memory (``141gb``, ``144g``, ``hbm3e``): whole
   words, so "nvidia gh200 ..." can never match "nvidia h200", and variant words such as
   ``lite`` (TPU v4 lite is another chip than TPU v4), ``nvl``, ``pcie`` or ``mig`` (a slice of
   a GPU has a fraction of its peak) never fall back to the full chip;
3. otherwise None: the caller needs an explicit override (``--peak-tflops``, ``--hbm-gbps``).

Sources (vendor datasheets / cloud docs): Google Cloud TPU system architecture pages
(cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e); NVIDIA H100 Tensor Core GPU datasheet (SXM,
PCIe, NVL), NVIDIA H200 Tensor Core GPU datasheet (SXM, NVL), NVIDIA GH200 Grace Hopper
Superchip datasheet, NVIDIA A100 Tensor Core GPU datasheet. NVIDIA's headline Tensor Core
numbers count 2:4 structured sparsity ("with sparsity" footnote); the table holds the dense
halves, because model FLOPs are dense. On TPU v4 and v5p a JAX device is a whole chip (both
TensorCores, "megacore"), so the per-chip figures are per device. Sizes are the vendors'
figures (HBM stacks are built in GiB, so "80 GB" of HBM is 80 GiB of capacity).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """One accelerator chip, per JAX device."""

    name: str  # short name, e.g. "v5e", "h100"
    peak_bf16_tflops: float  # dense (no 2:4 sparsity)
    hbm_gbps: float  # HBM bandwidth, GB/s (1e9 bytes per second)
    hbm_gib: float  # HBM capacity, GiB


SPECS: dict[str, DeviceSpec] = {s.name: s for s in (
    DeviceSpec("v4", 275.0, 1200.0, 32.0),
    DeviceSpec("v5e", 197.0, 819.0, 16.0),  # a newer revision of the doc says "800 GiBps"
    DeviceSpec("v5p", 459.0, 2765.0, 95.0),
    DeviceSpec("v6e", 918.0, 1638.0, 32.0),
    DeviceSpec("h100", 989.0, 3350.0, 80.0),  # SXM5; datasheet 1,979 sparse
    DeviceSpec("h100-pcie", 756.0, 2000.0, 80.0),  # datasheet 1,513 sparse, HBM2e
    DeviceSpec("h100-nvl", 835.0, 3900.0, 94.0),  # datasheet 1,671 sparse
    DeviceSpec("h200", 989.0, 4800.0, 141.0),  # SXM; the H100's die with HBM3e
    DeviceSpec("h200-nvl", 835.0, 4800.0, 141.0),  # datasheet 1,671 sparse
    DeviceSpec("gh200", 989.0, 4000.0, 96.0),  # Grace Hopper, 96 GB HBM3 (Grace's LPDDR5X not counted)
    DeviceSpec("gh200-144g", 989.0, 4900.0, 144.0),  # Grace Hopper, 144 GB HBM3e
    DeviceSpec("a100", 312.0, 2039.0, 80.0),  # SXM4 80GB; datasheet 624 sparse
    DeviceSpec("a100-40g", 312.0, 1555.0, 40.0),  # SXM4 40GB
    DeviceSpec("a100-pcie", 312.0, 1935.0, 80.0),  # PCIe 80GB
    DeviceSpec("a100-pcie-40g", 312.0, 1555.0, 40.0),  # PCIe 40GB
)}

# jax.Device.device_kind (normalised) -> short name. TPU kinds are libtpu's names: v5e and v6e
# report themselves as "lite" chips, v5p as "TPU v5"; the "v5e" / "v5p" / "v6e" spellings are
# accepted too. NVIDIA kinds are the CUDA device names (cudaDeviceProp.name).
KINDS: dict[str, str] = {
    "tpu v4": "v4",
    "tpu v5 lite": "v5e",
    "tpu v5e": "v5e",
    "tpu v5": "v5p",
    "tpu v5p": "v5p",
    "tpu v6 lite": "v6e",
    "tpu v6e": "v6e",
    "nvidia h100 80gb hbm3": "h100",
    "nvidia h100 pcie": "h100-pcie",
    "nvidia h100 nvl": "h100-nvl",
    "nvidia h200": "h200",
    "nvidia h200 nvl": "h200-nvl",
    "nvidia gh200 480gb": "gh200",
    "nvidia gh200 144g hbm3e": "gh200-144g",
    "nvidia a100-sxm4-80gb": "a100",
    "nvidia a100-sxm4-40gb": "a100-40g",
    "nvidia a100 80gb pcie": "a100-pcie",
    "nvidia a100-pcie-40gb": "a100-pcie-40g",
}

# Words that may follow a known kind in the fallback: memory sizes and HBM generations only.
_MEMORY_WORD = re.compile(r"\d+(gb|g|gib)|hbm\d*e?")


def normalise_kind(kind: str) -> str:
    """Lower case, runs of whitespace collapsed to one space."""
    return " ".join(str(kind).lower().split())


def device_spec(kind_or_name: str | None) -> DeviceSpec | None:
    """The DeviceSpec of a ``jax.Device.device_kind`` or a short name (see the module docstring for
    the matching rules); None when unknown (CPUs, new chips, MIG slices)."""
    if not kind_or_name:
        return None
    key = normalise_kind(kind_or_name)
    if key in SPECS:
        return SPECS[key]
    if key in KINDS:
        return SPECS[KINDS[key]]
    words = key.split()
    best: tuple[int, str] | None = None
    for known, name in KINDS.items():
        n = len(known.split())
        if (words[:n] == known.split() and all(_MEMORY_WORD.fullmatch(w) for w in words[n:])
                and (best is None or n > best[0])):
            best = (n, name)
    return SPECS[best[1]] if best else None


def detect_device(devices: Sequence[Any] | None = None) -> tuple[str, DeviceSpec | None]:
    """(device_kind, spec) of the first of ``devices`` (default ``jax.devices()``)."""
    if devices is None:
        import jax

        devices = jax.devices()
    kind = devices[0].device_kind if devices else "unknown"
    return kind, device_spec(kind)


def _override(value: float, what: str) -> float:
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    return value


def peak_tflops_for(kind: str | None, override: float | None = None) -> float | None:
    """Dense bf16 peak TFLOP/s of one device of ``kind``; ``override`` (e.g. the ``peak_tflops``
    run setting) wins when given. None for unknown kinds: no MFU is reported then."""
    if override is not None:
        return _override(override, "peak_tflops")
    spec = device_spec(kind)
    return spec.peak_bf16_tflops if spec else None


def hbm_gbps_for(kind: str | None, override: float | None = None) -> float | None:
    """HBM bandwidth (GB/s) of one device of ``kind``; ``override`` (``--hbm-gbps``) wins."""
    if override is not None:
        return _override(override, "hbm_gbps")
    spec = device_spec(kind)
    return spec.hbm_gbps if spec else None


def detect_peak_tflops(override: float | None = None, devices: Sequence[Any] | None = None
                       ) -> tuple[str, float | None]:
    """(device_kind, peak TFLOP/s per device) of ``devices`` (default ``jax.devices()``), for MFU."""
    kind, _ = detect_device(devices)
    return kind, peak_tflops_for(kind, override)
