"""Our native checkpoint format: an Orbax PyTree checkpoint of the params + the HF config.json.

Layout of a directory written by ``save_native``::

    config.json          HF (flat hub) config, readable by ModelConfig.from_json_file
    qwen2vl_jax.json     marker: {"format": "qwen2vl_jax/orbax", "version": 1, "dtype": ...}
    params/              orbax StandardCheckpointer tree (nested dict of arrays)

Restoring goes through abstract arrays, so it can target any dtype and, later, any sharding.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from qwen2vl_jax.config import ModelConfig, canonical_dtype

MARKER = "qwen2vl_jax.json"
FORMAT = "qwen2vl_jax/orbax"


def is_native_checkpoint(directory: str | os.PathLike) -> bool:
    return (Path(directory) / MARKER).exists()


def save_native(directory: str | os.PathLike, cfg: ModelConfig, params: dict) -> Path:
    """Write ``params`` (a nested dict of numpy or jax arrays, all of one floating dtype)."""
    dtype = canonical_dtype(np.dtype(jax.tree.leaves(params)[0].dtype))
    d = Path(directory).absolute()
    d.mkdir(parents=True, exist_ok=True)
    # Peak host memory stays at the model size (measured 1.06x for a 2B convert) because:
    # - numpy leaves are written in place: Orbax's default NumpyHandler deep-copies every host
    #   array first, and its jax.Array path stages a host copy of every array at once (2.05-2.8x);
    # - OCDBT is off: it buffers whole data files in memory before flushing (+0.8x measured);
    # - no zstd: compression buffers cost another ~0.4x, and bf16 weights barely compress.
    # The result is a standard Orbax PyTree checkpoint (one zarr array per parameter).
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, ocp.type_handlers.ArrayHandler()),
    )
    handler = ocp.PyTreeCheckpointHandler(save_concurrent_gb=1, type_handler_registry=registry,
                                         use_ocdbt=False, use_compression=False)
    with ocp.Checkpointer(handler) as ckptr:
        ckptr.save(d / "params", args=ocp.args.PyTreeSave(params), force=True)
    with open(d / "config.json", "w") as f:
        json.dump(cfg.to_hf_dict(dtype), f, indent=2)
    with open(d / MARKER, "w") as f:
        json.dump({"format": FORMAT, "version": 1, "dtype": dtype}, f)
    return d


def load_native(directory: str | os.PathLike, abstract_params: dict, as_numpy: bool = False) -> dict:
    """Restore params into the shapes/dtypes (and shardings, if set) of ``abstract_params``.

    ``as_numpy`` restores host numpy arrays (for conversion: reading a CPU jax array back as
    numpy costs a copy of it)."""
    d = Path(directory).absolute()
    with open(d / MARKER) as f:
        marker = json.load(f)
    if marker.get("format") != FORMAT:
        raise ValueError(f"{d}: {MARKER} says format {marker.get('format')!r}, expected {FORMAT!r}")
    # Bounded restore concurrency keeps the restore at about the model size too.
    handler = ocp.PyTreeCheckpointHandler(restore_concurrent_gb=1)
    if as_numpy:
        restore_args = jax.tree.map(lambda x: ocp.RestoreArgs(restore_type=np.ndarray, dtype=x.dtype),
                                    abstract_params)
    else:
        restore_args = jax.tree.map(
            lambda x: ocp.ArrayRestoreArgs(dtype=x.dtype, global_shape=x.shape,
                                           sharding=getattr(x, "sharding", None) or _default_sharding()),
            abstract_params)
    with ocp.Checkpointer(handler) as ckptr:
        try:
            return ckptr.restore(d / "params", args=ocp.args.PyTreeRestore(restore_args=restore_args))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{d}/params does not match the config in {d}/config.json: {e}") from e


def _default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])
