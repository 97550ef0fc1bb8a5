"""Our native checkpoint format: an Orbax PyTree checkpoint of the params + the HF config.json.

Layout of a directory written by ``save_native``::

    config.json          HF (flat hub) config, readable by ModelConfig.from_json_file
    qwen2vl_jax.json     marker: {"format": "qwen2vl_jax/orbax", "version": 1, "dtype": ...,
                         "files": {path under params/: size in bytes}}, written last
    params/              orbax StandardCheckpointer tree (nested dict of arrays)

Restoring goes through abstract arrays, so it can target any dtype and, later, any sharding.

A directory is untrusted input: the marker is validated, a save that never finished (no
marker) is not a native checkpoint, the files the marker lists must all be there with their
sizes, and the stored array shapes (Orbax metadata, no array read) must match the config
before any array is restored. Every failure is one ``ValueError`` naming the directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from qwen2vl_jax.config import ModelConfig, canonical_dtype

MARKER = "qwen2vl_jax.json"
FORMAT = "qwen2vl_jax/orbax"


def read_marker(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The marker of a native checkpoint, None when there is none; ValueError when it is damaged."""
    path = Path(directory) / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        found = marker.get("format") if isinstance(marker, dict) else marker
        raise ValueError(f"{path}: says format {found!r}, expected {FORMAT!r}")
    try:
        canonical_dtype(marker.get("dtype"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: 'dtype' must be 'float32' or 'bfloat16', "
                         f"got {marker.get('dtype')!r}") from e
    files = marker.get("files")
    if files is not None and not (isinstance(files, dict) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in files.values())):
        raise ValueError(f"{path}: 'files' must map file names to sizes in bytes")
    return marker


def is_native_checkpoint(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds our marker (ValueError if the marker is damaged)."""
    return read_marker(directory) is not None


def _file_sizes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def save_native(directory: str | os.PathLike, cfg: ModelConfig, params: dict) -> Path:
    """Write ``params`` (a nested dict of numpy or jax arrays, all of one floating dtype)."""
    dtype = canonical_dtype(np.dtype(jax.tree.leaves(params)[0].dtype))
    d = Path(directory).absolute()
    d.mkdir(parents=True, exist_ok=True)
    (d / MARKER).unlink(missing_ok=True)  # a crash below leaves no marker: not a checkpoint
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
        json.dump({"format": FORMAT, "version": 1, "dtype": dtype, "files": _file_sizes(d / "params")}, f)
    return d


def _check_files(params_dir: Path, files: dict[str, int] | None) -> None:
    if not params_dir.is_dir():
        raise ValueError(f"{params_dir}: missing (the checkpoint's arrays); the save or copy is incomplete")
    if files is None:  # written before the marker listed its files
        return
    have = _file_sizes(params_dir)
    missing = sorted(set(files) - set(have))
    if missing:
        raise ValueError(f"{params_dir}: {len(missing)} file(s) missing, e.g. {missing[0]}; "
                         "the checkpoint is incomplete or damaged")
    wrong = [f"{k} ({have[k]} bytes, expected {v})" for k, v in files.items() if have[k] != v]
    if wrong:
        raise ValueError(f"{params_dir}: {len(wrong)} file(s) truncated or changed, e.g. {wrong[0]}")


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p, simple=True, separator="."): tuple(x.shape) for p, x in flat}


def _check_shapes(params_dir: Path, config: Path, abstract_params: dict) -> None:
    """Stored shapes (Orbax metadata; no array is read) against the config's parameters."""
    try:
        with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
            stored = ckptr.metadata(params_dir).item_metadata.tree
    except Exception as e:  # Orbax raises many types for an unreadable tree
        raise ValueError(f"{params_dir}: unreadable Orbax metadata ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
    have, want = _shapes(stored), _shapes(abstract_params)
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    shapes = [f"{k}: checkpoint {have[k]}, expected {v}" for k, v in sorted(want.items())
              if have.get(k, v) != v]
    if missing or unexpected or shapes:
        parts = [f"{params_dir} does not match the config in {config}:"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrongly-shaped", shapes)):
            if items:
                parts.append(f"  {label} arrays ({len(items)}): {items}")
        raise ValueError("\n".join(parts))


def load_native(directory: str | os.PathLike, abstract_params: dict, as_numpy: bool = False) -> dict:
    """Restore params into the shapes/dtypes (and shardings, if set) of ``abstract_params``.

    ``as_numpy`` restores host numpy arrays (for conversion: reading a CPU jax array back as
    numpy costs a copy of it)."""
    d = Path(directory).absolute()
    marker = read_marker(d)
    if marker is None:
        raise ValueError(f"{d}: not a qwen2vl_jax Orbax checkpoint (no {MARKER}; a save that did not finish "
                         "leaves none)")
    _check_files(d / "params", marker.get("files"))
    _check_shapes(d / "params", d / "config.json", abstract_params)
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
        except (ValueError, KeyError, OSError) as e:  # tensorstore reports damaged chunks as ValueError
            first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise ValueError(f"{d}/params: cannot read the arrays ({first})") from e


def _default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])
