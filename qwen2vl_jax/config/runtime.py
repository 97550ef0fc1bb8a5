"""How to run an architecture: dtypes, attention kernels, rematerialisation and fixed shapes.

None of this is saved with the weights, and none of it changes what the model computes beyond
rounding: the same checkpoint runs in fp32 on a CPU test and in bf16 with Pallas kernels on a
TPU pod. Modules keep only the fields they use (a dtype, a kernel name) as static attributes,
so changing the buckets never changes a module's graph definition.

A training recipe's ``runtime:`` section is this dataclass (``train/run_config.py``); the facade
takes its fields as keyword arguments (``from_pretrained(path, dtype="bfloat16",
text_attention_impl="block_sparse")``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from qwen2vl_jax.nn.remat import REMAT_POLICIES
from qwen2vl_jax.ops.attention import IMPLEMENTATIONS as ATTENTION_IMPLS
from qwen2vl_jax.sharding.mesh import parse_mesh

# Accepted spellings of the two supported floating-point types.
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "f32": "float32",
               "bfloat16": "bfloat16", "bf16": "bfloat16"}


def canonical_dtype(dtype: Any) -> str:
    """"float32" or "bfloat16" from a name, a numpy/jax dtype or an alias (fp32, bf16)."""
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype {dtype!r} is not supported; use 'float32' or 'bfloat16'")
    return DTYPE_NAMES[name]


def _powers_of_two(start: int, stop: int) -> tuple[int, ...]:
    out, n = [], start
    while n <= stop:
        out.append(n)
        n *= 2
    return tuple(out)


def bucket_ladder(step: int = 64, linear_stop: int = 1024, per_octave: int = 4,
                  stop: int = 65536) -> tuple[int, ...]:
    """step, 2 step, ... linear_stop, then ``per_octave`` evenly spaced sizes per doubling
    (1280, 1536, 1792, 2048, 2560, ... for 4), ending at ``stop``: at most ``step`` padded
    positions up to linear_stop, then at most a fraction 1 / (per_octave + 1) of the bucket
    (20% for 4). Powers of two stay buckets (square images of 32 x 32 or 64 x 64 patches fit
    exactly). Default: 16 + 24 = 40 sizes from 64 to 65536."""
    out = list(range(step, linear_stop + 1, step))
    octave = linear_stop
    while out[-1] < stop:
        out += [min(stop, octave + octave * i // per_octave) for i in range(1, per_octave + 1)]
        octave *= 2
    return tuple(sorted(set(out)))


# The default ladders: fine (little padding, more programs) against powers of two (the fewest
# programs: up to 2x the work). ``qwen2vl-jax bench --sweep`` reports both for its grid.
FINE_PATCHES = bucket_ladder(64, 1024, 4, 65536)
FINE_TEXT = bucket_ladder(64, 1024, 4, 32768)
POW2_PATCHES = _powers_of_two(256, 65536)
POW2_TEXT = _powers_of_two(128, 32768)


@dataclasses.dataclass(frozen=True)
class BucketConfig:
    """Fixed compiled shapes: every distinct input shape is a new XLA program.

    Every input is padded up to the smallest bucket that fits: all images and video slices of a
    batch form one patch stream padded to a ``patch_buckets`` entry, text is left-padded to a
    ``text_buckets`` entry and the batch to a ``batch_buckets`` entry. Sizes are sorted; the
    patch buckets must be multiples of spatial_merge_size**2 so merge windows stay whole.

    Default: the fine ladder (``bucket_ladder``: steps of 64 to 1024, then four sizes per
    doubling); ``BucketConfig.powers_of_two()`` compiles fewer programs and pads up to 2x.
    """

    patch_buckets: tuple[int, ...] = FINE_PATCHES
    text_buckets: tuple[int, ...] = FINE_TEXT
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    # Decode-cache lengths (prompt bucket + new tokens) are rounded up to a multiple of this.
    cache_multiple: int = 128

    def __post_init__(self):
        for name in ("patch_buckets", "text_buckets", "batch_buckets"):
            sizes = tuple(sorted(int(x) for x in getattr(self, name)))
            if not sizes or sizes[0] <= 0:
                raise ValueError(f"BucketConfig.{name} must be a non-empty list of positive sizes")
            object.__setattr__(self, name, sizes)
        if int(self.cache_multiple) < 1:
            raise ValueError(f"BucketConfig.cache_multiple must be >= 1, got {self.cache_multiple}")

    @classmethod
    def powers_of_two(cls, **changes: Any) -> BucketConfig:
        """Patches 256 ... 65536 and text 128 ... 32768 in powers of two."""
        return cls(**{"patch_buckets": POW2_PATCHES, "text_buckets": POW2_TEXT, **changes})


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """``dtype`` is the compute dtype, ``param_dtype`` the storage dtype of the weights (fp32
    master weights with bf16 compute: ``param_dtype="float32", dtype="bfloat16"``).

    ``*_attention_impl``: one of ``ops.attention.IMPLEMENTATIONS`` per tower; ``auto`` picks per
    platform and shape (``ops.attention.resolve_impl``). ``vision_remat`` / ``text_remat``: the
    rematerialisation policy of each tower's scanned layers, by name (``nn/remat.py``). ``mesh``: the device mesh as a string such as
    ``"data=2,fsdp=-1,tensor=2"`` (``sharding/mesh.py``); None puts every device on ``fsdp``.
    """

    dtype: str = "float32"
    param_dtype: str = "float32"
    vision_attention_impl: str = "auto"
    text_attention_impl: str = "auto"
    vision_remat: str = "none"
    text_remat: str = "none"
    buckets: BucketConfig = dataclasses.field(default_factory=BucketConfig)
    mesh: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        object.__setattr__(self, "param_dtype", canonical_dtype(self.param_dtype))
        for name in ("vision_attention_impl", "text_attention_impl"):
            if getattr(self, name) not in ATTENTION_IMPLS:
                raise ValueError(f"runtime: {name} {getattr(self, name)!r} is not one of {ATTENTION_IMPLS}")
        for name in ("vision_remat", "text_remat"):
            if getattr(self, name) not in REMAT_POLICIES:
                raise ValueError(f"runtime: {name} {getattr(self, name)!r} is not one of {tuple(REMAT_POLICIES)}")
        if not isinstance(self.buckets, BucketConfig):
            raise ValueError(f"runtime: buckets must be a BucketConfig, got {type(self.buckets).__name__}")
        if self.mesh is not None:
            parse_mesh(self.mesh, None)  # the syntax; the sizes are checked against the devices later

    def replace(self, **changes: Any) -> RuntimeConfig:
        return dataclasses.replace(self, **changes)
