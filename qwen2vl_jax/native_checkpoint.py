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
from typing import Any

import jax
import orbax.checkpoint as ocp

from qwen2vl_jax.config import ModelConfig

MARKER = "qwen2vl_jax.json"
FORMAT = "qwen2vl_jax/orbax"


def is_native_checkpoint(directory: str | os.PathLike) -> bool:
    return (Path(directory) / MARKER).exists()


def save_native(directory: str | os.PathLike, cfg: ModelConfig, params: dict) -> Path:
    d = Path(directory).absolute()
    d.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(d / "params", params, force=True)
        ckptr.wait_until_finished()
    with open(d / "config.json", "w") as f:
        json.dump(cfg.to_hf_dict(), f, indent=2)
    with open(d / MARKER, "w") as f:
        json.dump({"format": FORMAT, "version": 1, "dtype": cfg.param_dtype}, f)
    return d


def load_native(directory: str | os.PathLike, abstract_params: dict) -> dict:
    """Restore params into the shapes/dtypes (and shardings, if set) of ``abstract_params``."""
    d = Path(directory).absolute()
    with open(d / MARKER) as f:
        marker = json.load(f)
    if marker.get("format") != FORMAT:
        raise ValueError(f"{d}: {MARKER} says format {marker.get('format')!r}, expected {FORMAT!r}")
    target = jax.tree.map(_abstract_leaf, abstract_params)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            return ckptr.restore(d / "params", target)
        except (ValueError, KeyError) as e:
            raise ValueError(f"{d}/params does not match the config in {d}/config.json: {e}") from e


def _abstract_leaf(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
