"""A random-access source over a JSONL file (one record per line) plus an image folder.

``JsonlSource(path, image_root=None, format="auto")`` scans the file once to build a line-offset
index (NumPy arrays, chunked scan: the file never sits in memory), then reads single lines with
``os.pread`` on demand. It has ``__len__`` and ``__getitem__``, which is all grain's
``MapDataset.source`` needs, and pickles without its file handle (worker processes reopen the
file lazily; the pickle carries the offset index, about 16 bytes per line).

Formats (``format=``), converted to the canonical record of ``data_pipelines.formats``:

- ``"canonical"``: ``{"messages", "images", "videos"}`` as is;
- ``"llava"``: ``{"image", "conversations": [{"from", "value"}]}`` with ``<image>`` placeholders;
- ``"hf"``: transformers-style messages whose image/video items carry their source inline;
- ``"auto"`` (default): per line, ``conversations`` -> llava; a top-level ``images``/``videos``
  key -> canonical; an inline image/video source in a content item -> hf; else canonical.

Relative image/video paths are resolved against ``image_root`` (default: the JSONL's folder);
absolute paths, URLs (``http://``, ``https://``) and ``data:`` URIs are left alone. Blank lines
are skipped (they are not records).

Error convention (shared by every source in ``data_pipelines``)
----------------------------------------------------------------
A record that cannot be produced (invalid JSON, not UTF-8, not a JSON object, an importer
error, a media entry that is neither a string nor a list of strings) does NOT raise from
``__getitem__``: it comes back as::

    {"_error": "<path>:<line>: <reason>", "messages": [], "images": [], "videos": []}

where ``<line>`` is the 1-based physical line number in the file. Consumers check
``ERROR_KEY in record`` (or ``is_error(record)``), skip the record and count the reason. The empty
``messages`` make ``formats.validate`` reject the record too, so a consumer that forgets the
check still cannot train on it. More generally, keys starting with ``_`` are metadata, never
training data (``Mixture`` adds ``_source``). ``__getitem__`` still raises ``IndexError`` for an
index out of range and ``OSError`` when the file itself cannot be read: those are not bad
records but a broken setup.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines import formats

ERROR_KEY = "_error"
FORMATS = ("auto", "canonical", "llava", "hf")
_WHITESPACE = b" \t\r\n"  # what JSON calls whitespace
_SHORT_LINE = 64
_NOT_A_PATH = ("http://", "https://", "data:")
_CHUNK = 1 << 24


def error_record(reason: str) -> dict[str, Any]:
    """A record that carries only the reason it could not be produced (see the module doc)."""
    return {ERROR_KEY: reason, "messages": [], "images": [], "videos": []}


def is_error(record: Any) -> bool:
    return isinstance(record, dict) and ERROR_KEY in record


def _index_lines(path: str, chunk_size: int = _CHUNK) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(start, end, line_number) of every non-blank line; line_number is None when no line
    was blank (then it is index + 1). End offsets exclude the newline."""
    starts, ends, numbers = [], [], []
    any_blank = False
    carry = b""  # the unfinished last line of the previous chunk
    base = 0  # file offset of carry[0]
    lines_before = 0
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk_size)
            buf = carry + data if carry else data
            if not data:  # end of file: a last line without a newline
                if buf.strip(_WHITESPACE):
                    starts.append(np.array([base], np.int64))
                    ends.append(np.array([base + len(buf)], np.int64))
                    numbers.append(np.array([lines_before + 1], np.int64))
                elif buf:
                    any_blank = True
                break
            arr = np.frombuffer(buf, np.uint8)
            newlines = np.flatnonzero(arr == 0x0A)
            if newlines.size == 0:
                carry = buf
                continue
            line_start = np.concatenate(([0], newlines[:-1] + 1))
            keep = newlines > line_start  # empty lines are blank
            # A blank line is all whitespace; only short lines need a look (records are long).
            for i in np.flatnonzero(keep & (newlines - line_start <= _SHORT_LINE)):
                keep[i] = bool(buf[line_start[i]:newlines[i]].strip(_WHITESPACE))
            any_blank |= not bool(keep.all())
            starts.append(line_start[keep].astype(np.int64) + base)
            ends.append(newlines[keep].astype(np.int64) + base)
            numbers.append(np.flatnonzero(keep).astype(np.int64) + lines_before + 1)
            lines_before += newlines.size
            cut = int(newlines[-1]) + 1
            carry, base = buf[cut:], base + cut
    cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64))
    return cat(starts), cat(ends), cat(numbers) if any_blank else None


def _has_inline_media(record: dict[str, Any]) -> bool:
    messages = record.get("messages")
    for msg in messages if isinstance(messages, list) else []:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list):
            for item in content:
                if isinstance(item, dict) and any(k in item for k in ("image", "image_url", "video")):
                    return True
    return False


def detect_format(record: dict[str, Any]) -> str:
    """The importer ``format="auto"`` picks for one decoded line."""
    if "conversations" in record:
        return "llava"
    if "images" in record or "videos" in record:
        return "canonical"
    return "hf" if _has_inline_media(record) else "canonical"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def from_canonical(record: dict[str, Any]) -> dict[str, Any]:
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise ValueError(f"record has no 'messages' list (got {type(messages).__name__})")  # noqa: TRY004
    return {"messages": messages, "images": _as_list(record.get("images")),
            "videos": _as_list(record.get("videos"))}


def convert(record: Any, format: str = "auto") -> dict[str, Any]:
    """One decoded JSON value -> canonical record; ValueError with a reason otherwise."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")  # noqa: TRY004
    fmt = detect_format(record) if format == "auto" else format
    if fmt == "llava":
        return formats.from_llava(record)
    if fmt == "hf":
        return formats.from_hf_content(record)
    if fmt == "canonical":
        return from_canonical(record)
    raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")


def resolve_media(entry: Any, root: str | None, kind: str) -> Any:
    """Resolve a relative path (or each path of a list of video frames) against ``root``."""
    if isinstance(entry, str):
        if root is None or os.path.isabs(entry) or entry.startswith(_NOT_A_PATH):
            return entry
        return os.path.join(root, entry)
    if kind == "video" and isinstance(entry, list) and all(isinstance(x, str) for x in entry):
        return [resolve_media(x, root, "frame") for x in entry]
    what = "a path or a list of frame paths" if kind == "video" else "a path"
    raise ValueError(f"{kind} entry must be {what}, got {type(entry).__name__}")


def resolve_record(record: dict[str, Any], root: str | None) -> dict[str, Any]:
    return {**record,
            "images": [resolve_media(x, root, "image") for x in record.get("images") or []],
            "videos": [resolve_media(x, root, "video") for x in record.get("videos") or []]}


class JsonlSource:
    """Random-access canonical records from a JSONL file; see the module docstring."""

    def __init__(self, path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 format: str = "auto"):
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")
        self.path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"JSONL file not found: {self.path}")
        root = os.path.dirname(self.path) if image_root is None else os.fspath(image_root)
        self.image_root = os.path.abspath(root)
        self.format = format
        self._starts, self._ends, self._lines = _index_lines(self.path)
        self._fd: int | None = None
        self._fd_pid: int | None = None

    def __len__(self) -> int:
        return int(self._starts.size)

    def line_number(self, index: int) -> int:
        """1-based line of record ``index`` in the file."""
        return int(self._lines[index]) if self._lines is not None else index + 1

    def read_line(self, index: int) -> bytes:
        start, end = int(self._starts[index]), int(self._ends[index])
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd, self._fd_pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return os.pread(self._fd, end - start, start)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range [0, {len(self)})")
        raw = self.read_line(index)
        where = f"{self.path}:{self.line_number(index)}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            return error_record(f"{where}: not UTF-8: {err}")
        try:
            obj = json.loads(text.lstrip("\ufeff"))
        except (json.JSONDecodeError, RecursionError) as err:
            return error_record(f"{where}: invalid JSON: {err}")
        try:
            return resolve_record(convert(obj, self.format), self.image_root)
        except Exception as err:  # noqa: BLE001 - any importer failure is this record's problem
            # A ValueError is the importer's own reason; anything else is named by its type.
            reason = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            return error_record(f"{where}: cannot import ({self.format}): {reason}")

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    def close(self) -> None:
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)
        self._fd = self._fd_pid = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - never raise from a finaliser
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fd"] = state["_fd_pid"] = None
        return state

    def __repr__(self) -> str:
        return f"JsonlSource({self.path!r}, image_root={self.image_root!r}, format={self.format!r}, " \
               f"len={len(self)})"
