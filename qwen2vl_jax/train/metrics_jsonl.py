"""``metrics.jsonl``, the record of a run: building its lines, reading it back, truncating it on
resume.

One JSON object per logged step, ``{"step": int, "time": unix seconds, <metric>: value, ...}``.
Non-finite floats (a NaN loss) are written as ``null`` so the file stays strict JSON. A resumed
run drops the lines of a killed attempt past its checkpoint (:func:`truncate_metrics`), and a
line cut by a kill is skipped on reading.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def json_scalar(key: str, value: Any) -> Any:
    """A JSON-ready Python scalar from a Python / numpy / jax scalar (jax values are fetched)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        if getattr(value, "size", 1) != 1:
            raise TypeError(f"metric {key!r}: expected a scalar, got shape {getattr(value, 'shape', '?')}")
        value = value.item()
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    raise TypeError(f"metric {key!r}: expected a number or string, got {type(value).__name__}")


def make_record(step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The record of one log call: step, wall time (ms resolution), then the metrics as JSON
    scalars (``step`` / ``time`` keys among the metrics are ignored: they are the record's own)."""
    record: dict[str, Any] = {"step": int(step), "time": round(time.time(), 3)}
    for key, value in metrics.items():
        if key in ("step", "time"):
            continue
        record[str(key)] = json_scalar(key, value)
    return record


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (or of a run directory holding one), in file order.

    Lines that are not JSON objects with a ``step`` (a line cut by a kill) are skipped.
    Raises FileNotFoundError when there is no such file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = _parse(line)
            if rec is not None:
                records.append(rec)
    return records


def _parse(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line:
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
        return None
    return rec


def truncate_metrics(path: str | os.PathLike, resume_step: int | None) -> int:
    """Rewrite ``path`` keeping the valid lines with ``step <= resume_step`` (all valid lines when
    ``resume_step`` is None: that only repairs a cut last line). Atomic (temp file + rename).
    Returns the number of lines kept. A missing file is left missing."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        rec = _parse(line)
        if rec is not None and (resume_step is None or rec["step"] <= resume_step):
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines) or (lines and not lines[-1].endswith("\n")):
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return len(kept)
