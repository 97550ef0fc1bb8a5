"""Read and write HF safetensors checkpoints with the numpy backend (no torch).

Loading streams: each tensor is read, transformed (transpose / head split) and copied straight
into a preallocated buffer of the target parameter (stacked layers fill one slice each), then
dropped. Peak host memory is the model size plus a few tensors, never 2-3x the model.
Every missing, unexpected or wrongly-shaped tensor is collected and reported in one ValueError.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from qwen2vl_jax.checkpoint.hf_names import NameMatcher, Rule, build_rules, expected_hf_names, num_layers
from qwen2vl_jax.config import ModelConfig

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"


def checkpoint_files(directory: str | os.PathLike) -> list[Path]:
    """The safetensors files of a HF checkpoint directory (index-sharded or single)."""
    d = Path(directory)
    index = d / SAFE_INDEX
    if index.exists():
        with open(index) as f:
            weight_map = json.load(f).get("weight_map", {})
        files = sorted({d / fn for fn in weight_map.values()})
        absent = [str(p) for p in files if not p.exists()]
        if absent:
            raise ValueError(f"{index} names shard files that do not exist: {absent}")
        return files
    if (d / SAFE_SINGLE).exists():
        return [d / SAFE_SINGLE]
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{d}: no model.safetensors, {SAFE_INDEX} or *.safetensors found")
    return files


_FROM_ST = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
_NP_FROM_ST = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16, "F64": np.float64,
               "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
               "BOOL": np.bool_}


class SafetensorsReader:
    """Reads one tensor at a time with plain file reads.

    safetensors' own reader memory-maps the file, and every mapped page it touches counts in the
    process RSS until the file is closed (2 GB shards measured +1.9 GB on a 2B convert). Here
    only the tensor being read is in memory. Format: u64 header length, JSON header, raw bytes.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError(f"{self.path}: not a safetensors file (truncated header)")
            n = int.from_bytes(raw, "little")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{self.path}: not a safetensors file ({e})") from e
        self.data_start = 8 + n
        header.pop("__metadata__", None)
        self.header: dict[str, dict] = header

    def keys(self) -> list[str]:
        return list(self.header)

    def dtype_name(self, name: str) -> str:
        return self.header[name]["dtype"]

    def get_tensor(self, name: str) -> np.ndarray:
        info = self.header[name]
        if info["dtype"] not in _NP_FROM_ST:
            raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        dt = np.dtype(_NP_FROM_ST[info["dtype"]])
        start, end = info["data_offsets"]
        count = (end - start) // dt.itemsize
        arr = np.fromfile(self.path, dtype=dt.newbyteorder("<"), count=count,
                          offset=self.data_start + start)
        if arr.size != count:
            raise ValueError(f"{self.path}: tensor {name} is truncated")
        return arr.reshape(info["shape"])


def stored_dtype(directory: str | os.PathLike) -> str:
    """The floating dtype the checkpoint's tensors are stored in (e.g. "bfloat16")."""
    for file in checkpoint_files(directory):
        reader = SafetensorsReader(file)
        for name in reader.header:
            if reader.dtype_name(name) in _FROM_ST:
                return _FROM_ST[reader.dtype_name(name)]
    raise ValueError(f"{directory}: no floating-point tensors found")


def _abstract_shapes(abstract: dict, path: tuple[str, ...]) -> tuple[int, ...]:
    node = abstract
    for key in path:
        node = node[key]
    return tuple(node.shape)


def load_hf_weights(
    directory: str | os.PathLike,
    cfg: ModelConfig,
    abstract_params: dict,
    dtype: str | np.dtype,
    sink: Any = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Read a HF checkpoint into a nested dict shaped like ``abstract_params`` (leaves with
    ``.shape``), one tensor at a time.

    Every file's header is checked first (no tensor data is read): all missing, unexpected,
    duplicated and wrongly-shaped tensors are reported in one ``ValueError``. Then each tensor
    is read, transformed to our layout and handed to ``sink`` (``sharding.placement``: host
    buffers by default, or straight onto its device shards), and dropped.
    """
    from qwen2vl_jax.sharding.placement import HostSink

    plan = _plan(directory, cfg, abstract_params)
    sink = HostSink(np.dtype(dtype)) if sink is None else sink
    for file, entries in plan:
        if progress:
            progress(f"reading {file.name}")
        reader = SafetensorsReader(file)
        for name, rule, layer, full_shape in entries:
            value = rule.to_ours(reader.get_tensor(name))
            sink.write(rule.path, full_shape, layer, value)
            del value
    return sink.finish()


def _plan(directory, cfg: ModelConfig, abstract_params: dict) -> list[tuple[Path, list[tuple]]]:
    """(file, [(tensor name, rule, layer or None, full parameter shape)]) from headers alone."""
    matcher = NameMatcher(build_rules(cfg))
    filled: set[str] = set()
    unexpected: list[str] = []
    mismatched: list[str] = []
    plan = []
    for file in checkpoint_files(directory):
        reader = SafetensorsReader(file)
        entries = []
        for name in reader.header:
            hit = matcher.match(name)
            canonical = None
            if hit is not None:
                rule, layer = hit
                canonical = rule.hf_name.format(i=layer) if rule.stacked else rule.hf_name
                if rule.stacked and layer >= num_layers(cfg, rule):
                    hit = None
            if hit is None:
                if cfg.text.tie_word_embeddings and name == "lm_head.weight":
                    continue  # tied: transformers ignores a stored lm_head too
                unexpected.append(name)
                continue
            full_shape = _abstract_shapes(abstract_params, rule.path)
            target = full_shape[1:] if rule.stacked else full_shape
            stored_shape = tuple(reader.header[name]["shape"])
            expected_hf = tuple(rule.to_hf(np.empty(target, dtype=np.uint8)).shape)
            if stored_shape != expected_hf:
                mismatched.append(f"{name}: checkpoint {stored_shape}, expected {expected_hf}")
                filled.add(canonical)  # reported as mis-shaped, not also as missing
                continue
            if canonical in filled:
                unexpected.append(f"{name} (duplicate of {canonical})")
                continue
            filled.add(canonical)
            entries.append((name, rule, layer, full_shape))
        plan.append((file, entries))
    missing = [n for n in expected_hf_names(cfg) if n not in filled]
    if missing or unexpected or mismatched:
        parts = [f"checkpoint {directory} does not match the config:"]
        if missing:
            parts.append(f"  missing tensors ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"  unexpected tensors ({len(unexpected)}): {unexpected}")
        if mismatched:
            parts.append(f"  wrongly-shaped tensors ({len(mismatched)}): {mismatched}")
        raise ValueError("\n".join(parts))
    return plan


def iter_hf_tensors(cfg: ModelConfig, params: dict, dtype: str | np.dtype | None = None
                    ) -> Iterator[tuple[str, np.ndarray]]:
    """(on-disk HF name, numpy tensor) for every parameter, one (layer slice) at a time."""

    def convert(rule: Rule, x: np.ndarray) -> np.ndarray:
        if dtype is not None:
            x = x.astype(np.dtype(dtype), copy=False)
        return np.ascontiguousarray(rule.to_hf(x))

    for rule in build_rules(cfg):
        node = params
        for key in rule.path:
            node = node[key]
        arr = np.asarray(node)  # zero-copy for host (CPU) jax arrays
        if rule.stacked:
            for i in range(arr.shape[0]):
                yield rule.hf_name.format(i=i), convert(rule, arr[i])
        else:
            yield rule.hf_name, convert(rule, arr)


_ST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64",
              "int64": "I64", "int32": "I32", "uint8": "U8", "bool": "BOOL"}


def _hf_layout(cfg: ModelConfig, params: dict, dtype: np.dtype | None) -> list[tuple[str, tuple, np.dtype]]:
    """(name, HF shape, dtype) of every tensor, computed without touching the data."""
    layout = []
    for rule in build_rules(cfg):
        node = params
        for key in rule.path:
            node = node[key]
        dt = np.dtype(dtype) if dtype is not None else np.dtype(node.dtype)
        per = tuple(node.shape[1:] if rule.stacked else node.shape)
        hf_shape = tuple(rule.to_hf(np.empty(per, dtype=np.uint8)).shape)
        count = node.shape[0] if rule.stacked else 1
        for i in range(count):
            layout.append((rule.hf_name.format(i=i) if rule.stacked else rule.hf_name, hf_shape, dt))
    return layout


def _write_safetensors(path: Path, entries: list[tuple[str, tuple, np.dtype]],
                       tensors: Iterator[tuple[str, np.ndarray]]) -> None:
    """Stream tensors into one safetensors file: header first (from shapes), then the bytes.

    The format is an 8-byte little-endian header length, a JSON header padded to 8 bytes, and
    the raw little-endian tensor bytes in header order. Only one tensor is in memory at a time.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, dt in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        header[name] = {"dtype": _ST_DTYPES[dt.name], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for (name, shape, dt), (got_name, tensor) in zip(entries, tensors):
            assert name == got_name and tuple(tensor.shape) == tuple(shape), (name, got_name)
            # A uint8 view writes the bytes without copying (tobytes would double the largest tensor).
            f.write(np.ascontiguousarray(tensor, dtype=dt).reshape(-1).view(np.uint8))


def save_hf_weights(directory: str | os.PathLike, cfg: ModelConfig, params: dict,
                    dtype: str | np.dtype | None = None, max_shard_bytes: int = 5 * 2**30,
                    progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write ``model.safetensors`` (or shards + index) in the on-disk HF layout, streaming."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    layout = _hf_layout(cfg, params, None if dtype is None else np.dtype(dtype))
    shards: list[list[tuple[str, tuple, np.dtype]]] = [[]]
    size = 0
    for entry in layout:
        nbytes = int(np.prod(entry[1], dtype=np.int64)) * entry[2].itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    n = len(shards)
    names = [SAFE_SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    tensors = iter_hf_tensors(cfg, params, dtype)
    for shard, name in zip(shards, names):
        if progress:
            progress(f"writing {name}")
        _write_safetensors(d / name, shard, tensors)
    if n > 1:
        weight_map = {entry[0]: name for shard, name in zip(shards, names) for entry in shard}
        total = sum(int(np.prod(e[1], dtype=np.int64)) * e[2].itemsize for e in layout)
        with open(d / SAFE_INDEX, "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        if (d / SAFE_SINGLE).exists():  # a stale single-file checkpoint would shadow the shards
            (d / SAFE_SINGLE).unlink()
    elif (d / SAFE_INDEX).exists():
        (d / SAFE_INDEX).unlink()
    return [d / name for name in names]
