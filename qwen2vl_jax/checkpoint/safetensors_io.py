"""Read and write HF safetensors checkpoints with the numpy backend (no torch).

Loading streams: each tensor is read, transformed (transpose / head split) and copied straight
into a preallocated buffer of the target parameter (stacked layers fill one slice each), then
dropped. Peak host memory is the model size plus a few tensors, never 2-3x the model.
Every missing, unexpected or wrongly-shaped tensor is collected and reported in one ValueError.
"""

from __future__ import annotations

import json
import math
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
        weight_map = _read_index(index)
        files = sorted({d / fn for fn in weight_map.values()})
        absent = [str(p) for p in files if not p.is_file()]
        if absent:
            raise ValueError(f"{index} names shard files that do not exist: {absent}")
        return files
    if (d / SAFE_SINGLE).exists():
        return [d / SAFE_SINGLE]
    files = sorted(d.glob("*.safetensors"))
    if not files:
        hint = ""
        if (d / "params").is_dir():  # what a native save that never wrote its marker leaves
            hint = " (params/ without qwen2vl_jax.json: an Orbax checkpoint whose save did not finish?)"
        raise ValueError(f"{d}: no model.safetensors, {SAFE_INDEX} or *.safetensors found{hint}")
    return files


def _read_index(index: Path) -> dict[str, str]:
    """``weight_map`` of a shard index: tensor name -> a file name in the same directory."""
    try:
        data = json.loads(index.read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{index}: not valid JSON ({e})") from e
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index}: expected an object whose 'weight_map' maps tensor names to file names")
    for fn in set(weight_map.values()):
        if not fn or Path(fn).name != fn or fn in (".", ".."):  # never read outside the directory
            raise ValueError(f"{index}: shard {fn!r} is not a file name in the checkpoint directory")
    return weight_map


# safetensors dtype -> numpy dtype (ml_dtypes for bfloat16 / float8).
_NP_FROM_ST = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
               "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
               "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
               "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_}
_FROM_ST = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
# The safetensors library refuses headers above 100 MB; so do we (before reading them).
MAX_HEADER_BYTES = 100_000_000


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        raise ValueError(f"duplicate key {next(k for k, _ in pairs if k in seen or seen.add(k))!r}")
    return out


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_entry(name: str, info: Any, data_size: int) -> tuple[int, int]:
    """(begin, end) of one header entry after checking it describes bytes inside the file."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise ValueError(f"tensor {name!r}: expected an object with dtype, shape and data_offsets, "
                         f"got {_short(info)}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _NP_FROM_ST:
        raise ValueError(f"tensor {name!r}: unknown dtype {_short(dtype)} (known: {', '.join(_NP_FROM_ST)})")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise ValueError(f"tensor {name!r}: shape must be a list of non-negative integers, "
                         f"got {_short(shape)}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise ValueError(f"tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end, "
                         f"got {_short(offsets)}")
    begin, end = offsets
    nbytes = math.prod(shape) * np.dtype(_NP_FROM_ST[dtype]).itemsize  # Python ints: no overflow
    if end - begin != nbytes:
        raise ValueError(f"tensor {name!r}: shape {_short(shape)} x {dtype} is {nbytes} bytes but "
                         f"data_offsets [{begin}, {end}] hold {end - begin}")
    if end > data_size:
        raise ValueError(f"tensor {name!r}: data_offsets [{begin}, {end}] run past the end of the data "
                         f"({data_size} bytes: the file is truncated or its header is wrong)")
    return begin, end


def _check_overlaps(spans: list[tuple[int, int, str]]) -> None:
    """No byte belongs to two tensors (empty tensors hold no bytes)."""
    last_end, last = 0, None
    for begin, end, name in sorted(s for s in spans if s[1] > s[0]):
        if begin < last_end:
            raise ValueError(f"tensors {last!r} and {name!r} overlap (bytes {begin}..{min(end, last_end)})")
        if end > last_end:
            last_end, last = end, name


class SafetensorsReader:
    """Reads one tensor at a time with plain file reads.

    safetensors' own reader memory-maps the file, and every mapped page it touches counts in the
    process RSS until the file is closed (2 GB shards measured +1.9 GB on a 2B convert). Here
    only the tensor being read is in memory. Format: u64 header length, JSON header, raw bytes.

    The file is untrusted input: the header length is checked against the file size before the
    header is read, and every entry (dtype, shape, offsets inside the data and not overlapping
    another) when the file is opened, so a hostile header can neither make us allocate more than
    the file holds nor read outside it. Every failure is a ``ValueError`` naming the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise ValueError(f"{self.path}: not a safetensors file ({size} bytes; it must start with "
                                 "an 8-byte header length)")
            n = int.from_bytes(f.read(8), "little")
            if n > size - 8:
                raise ValueError(f"{self.path}: not a safetensors file (header length {n} runs past the end "
                                 f"of the {size}-byte file)")
            if n > MAX_HEADER_BYTES:
                raise ValueError(f"{self.path}: header length {n} is over the {MAX_HEADER_BYTES} bytes "
                                 "safetensors allows")
            try:
                header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
            except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, duplicates
                raise ValueError(f"{self.path}: not a safetensors file (header is not JSON: {e})") from e
        if not isinstance(header, dict):
            raise ValueError(  # noqa: TRY004 - bad input is a ValueError by contract
                f"{self.path}: not a safetensors file (header is {type(header).__name__}, not a JSON object)")
        self.data_start = 8 + n
        self.data_size = size - self.data_start
        header.pop("__metadata__", None)
        try:
            _check_overlaps([(*_check_entry(k, v, self.data_size), k) for k, v in header.items()])
        except ValueError as e:
            raise ValueError(f"{self.path}: {e}") from e
        self.header: dict[str, dict] = header

    def keys(self) -> list[str]:
        return list(self.header)

    def dtype_name(self, name: str) -> str:
        return self.header[name]["dtype"]

    def get_tensor(self, name: str) -> np.ndarray:
        info = self.header[name]
        dt = np.dtype(_NP_FROM_ST[info["dtype"]])
        start, end = info["data_offsets"]
        count = (end - start) // dt.itemsize  # checked at open: inside the file
        arr = np.fromfile(self.path, dtype=dt.newbyteorder("<"), count=count, offset=self.data_start + start)
        if arr.size != count:
            raise ValueError(f"{self.path}: tensor {name} is truncated (the file shrank since it was opened)")
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


def load_hf_weights(directory: str | os.PathLike, cfg: ModelConfig, abstract_params: dict,
                    dtype: str | np.dtype, sink: Any = None,
                    progress: Callable[[str], None] | None = None) -> dict:
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
        if rule.stacked:
            for i in range(node.shape[0]):
                yield rule.hf_name.format(i=i), convert(rule, _on_host(node, i))
        else:
            yield rule.hf_name, convert(rule, _on_host(node, None))


def _on_host(node: Any, layer: int | None) -> np.ndarray:
    """One layer's slice (or the whole unstacked tensor) as numpy, gathering only that slice:
    a sharded (even multi-host) parameter is never whole on one host. Every process must call
    this in the same order when the array spans several processes (a collective)."""
    if isinstance(node, np.ndarray):
        return node if layer is None else node[layer]
    x = node if layer is None else node[layer]
    if hasattr(x, "is_fully_addressable") and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)  # zero-copy for a host (CPU) array on one device


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
                    progress: Callable[[str], None] | None = None, write: bool = True) -> list[Path]:
    """Write ``model.safetensors`` (or shards + index) in the on-disk HF layout, streaming one
    tensor (one layer of a stacked parameter) at a time. In a multi-process run every process
    calls this (the slices are gathered collectively) and only the one with ``write`` writes."""
    d = Path(directory)
    if write:
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
    if not write:
        for _ in tensors:  # take part in the gathers
            pass
        return [d / name for name in names]
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
