"""Training metrics: ``metrics.jsonl`` (always), TensorBoard, W&B, a terminal progress bar, and
throughput / MFU.

``metrics.jsonl`` in the run directory is the record of a run: one JSON object per
:meth:`MetricsLogger.log` call, ``{"step": int, "time": unix seconds, <metric>: value, ...}``,
flushed line by line so a killed run loses nothing that was logged. Non-finite floats (a NaN
loss) are written as ``null`` so the file stays strict JSON. A run resumed from the checkpoint
of step k passes ``resume_step=k``: lines of a killed attempt with step > k are dropped (the file
is rewritten) and TensorBoard is told to purge its events from step k+1 on.

Optional back ends, all imported lazily: TensorBoard through ``tensorboardX``; W&B (``wandb``,
the ``[track]`` extra) only when ``wandb=`` is given. This module imports neither at load time.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Self

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id"

_INSTALL_HINT = {
    "tensorboardX": "pip install tensorboardX (or the project's [train] extra)",
    "wandb": "pip install 'qwen2vl_jax[track]' (or pip install wandb)",
}


def _require(module: str, feature: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{feature} needs the '{module}' package, which is not installed: "
                          f"{_INSTALL_HINT.get(module, 'pip install ' + module)}") from e


def _scalar(key: str, value: Any) -> Any:
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


# ---------------------------------------------------------------------------------- throughput

class Throughput:
    """Tokens/s and MFU over a logging window.

    ``Throughput.rates(...)`` is the pure formula; the instance accumulates the steps of a window
    with :meth:`add` and turns them into rates with :meth:`window` (wall time measured from the
    previous window, or given). With JAX's async dispatch, block on the step's outputs (e.g. read
    the loss) before closing a window, or the time is wrong.

    Keys produced: ``tokens_per_s`` (all devices), ``tokens_per_s_per_device``,
    ``patches_per_s`` (when patches were counted), ``tflops_per_device`` (achieved model
    TFLOP/s per device, when FLOPs were given), ``mfu`` (a fraction, when a peak is known).
    """

    def __init__(self, n_devices: int = 1, peak_tflops: float | None = None):
        if n_devices < 1:
            raise ValueError(f"n_devices must be >= 1, got {n_devices}")
        self.n_devices = int(n_devices)
        self.peak_tflops = peak_tflops
        self.reset()

    @staticmethod
    def rates(*, tokens: float, seconds: float, patches: float = 0, flops: float | None = None,
              n_devices: int = 1, peak_tflops: float | None = None) -> dict[str, float]:
        """Rates of ``tokens`` / ``patches`` processed and ``flops`` (model FLOPs, all devices)
        done in ``seconds`` of wall time on ``n_devices`` devices of ``peak_tflops`` each."""
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        out = {"tokens_per_s": tokens / seconds, "tokens_per_s_per_device": tokens / seconds / n_devices}
        if patches:
            out["patches_per_s"] = patches / seconds
        if flops is not None:
            achieved = flops / seconds / n_devices / 1e12
            out["tflops_per_device"] = achieved
            if peak_tflops:
                out["mfu"] = achieved / peak_tflops
        return out

    def reset(self) -> None:
        """Start a new window now."""
        self._t0 = time.perf_counter()
        self._tokens = 0.0
        self._patches = 0.0
        self._flops: float | None = None
        self._steps = 0

    def add(self, tokens: float, patches: float = 0, flops: float | None = None) -> None:
        """Count one step's real tokens, patches and model FLOPs (all devices together)."""
        self._tokens += float(tokens)
        self._patches += float(patches)
        if flops is not None:
            self._flops = (self._flops or 0.0) + float(flops)
        self._steps += 1

    def window(self, seconds: float | None = None) -> dict[str, float]:
        """Rates over the steps added since the last window, then start a new one. Adds
        ``step_time_s`` (seconds per step). Empty when nothing was added."""
        elapsed = time.perf_counter() - self._t0 if seconds is None else float(seconds)
        steps = self._steps
        out = {}
        if steps and elapsed > 0:
            out = self.rates(tokens=self._tokens, seconds=elapsed, patches=self._patches, flops=self._flops,
                             n_devices=self.n_devices, peak_tflops=self.peak_tflops)
            out["step_time_s"] = elapsed / steps
        self.reset()
        return out


# ---------------------------------------------------------------------------------- progress bar

def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _hms(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressBar:
    """A one-line carriage-return progress bar: step/total, loss, tokens/s, MFU, elapsed < ETA.

    Draws only when ``stream`` is a terminal (or ``force``); redraws at most every
    ``min_interval`` seconds unless asked.
    """

    def __init__(self, total: int | None, *, start_step: int = 0, stream: IO[str] | None = None,
                 force: bool | None = None, min_interval: float = 0.1):
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(force) if force is not None else bool(isatty and isatty())
        self.total = total
        self.start_step = int(start_step)
        self.step = int(start_step)
        self.values: dict[str, Any] = {}
        self.min_interval = min_interval
        self._t0 = time.perf_counter()
        self._last_draw = -math.inf
        self._drawn = False

    def update(self, step: int, values: Mapping[str, Any] | None = None, *, force_draw: bool = False) -> None:
        self.step = int(step)
        if values:
            self.values.update({k: v for k, v in values.items() if k in ("loss", "tokens_per_s", "mfu")})
        now = time.perf_counter()
        if self.enabled and (force_draw or now - self._last_draw >= self.min_interval):
            self._last_draw = now
            self._draw(now)

    def render(self, now: float | None = None) -> str:
        now = time.perf_counter() if now is None else now
        elapsed = now - self._t0
        parts = []
        if self.total:
            frac = min(max(self.step / self.total, 0.0), 1.0)
            width = 20
            filled = round(frac * width)
            parts.append(f"step {self.step}/{self.total} [{'#' * filled}{'-' * (width - filled)}] {frac:6.1%}")
        else:
            parts.append(f"step {self.step}")
        v = self.values
        if v.get("loss") is not None:
            parts.append(f"loss {v['loss']:.4f}")
        if v.get("tokens_per_s") is not None:
            parts.append(f"{_si(v['tokens_per_s'])} tok/s")
        if v.get("mfu") is not None:
            parts.append(f"MFU {v['mfu']:.1%}")
        done = self.step - self.start_step
        time_part = _hms(elapsed)
        if self.total and done > 0:
            time_part += f"<{_hms(elapsed / done * max(self.total - self.step, 0))}"
        parts.append(time_part)
        return " | ".join(parts)

    def _draw(self, now: float) -> None:
        cols = shutil.get_terminal_size((100, 20)).columns
        line = self.render(now)[: max(cols - 1, 10)]
        self.stream.write("\r" + line.ljust(max(cols - 1, len(line))))
        self.stream.flush()
        self._drawn = True

    def clear(self) -> None:
        """Blank the line (before printing something else)."""
        if self.enabled and self._drawn:
            cols = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + " " * max(cols - 1, 1) + "\r")
            self.stream.flush()
            self._drawn = False

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
            self.enabled = False


# ---------------------------------------------------------------------------------- the logger

class MetricsLogger:
    """Writes every :meth:`log` call to ``run_dir/metrics.jsonl``, TensorBoard and W&B, and
    draws the progress bar.

    Args:
      run_dir: the run directory (created).
      tensorboard: "auto" (default: write ``run_dir/tensorboard`` when tensorboardX is installed),
        True (required: ImportError if tensorboardX is missing) or False.
      wandb: None / False (off, wandb never imported), True, or a dict of ``wandb.init`` keyword
        arguments (``project``, ``name``, ``entity``, ``tags``, ``mode``...). The W&B run id is
        kept in ``run_dir/wandb_run_id`` so a resumed run continues the same W&B run
        (``resume="allow"``; W&B ignores re-logged steps <= its last step).
      config: the resolved run config (W&B config; TensorBoard text ``config``).
      progress_total_steps: the step count the bar runs to (None: no total).
      progress: None (bar when stderr is a terminal), True or False.
      resume_step: the step of the checkpoint a resumed run restarted from (0 for a fresh
        start that must discard an old file); None appends to an existing file as it is.
      active: False makes every method a no-op (non-zero processes of a multi-host run).
      stream: where the progress bar goes (default ``sys.stderr``).
    """

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool | str = "auto",
                 wandb: bool | Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                 progress_total_steps: int | None = None, progress: bool | None = None,
                 resume_step: int | None = None, active: bool = True, stream: IO[str] | None = None):
        self.run_dir = Path(run_dir)
        self.active = active
        self.path = self.run_dir / METRICS_FILE
        self._file = None
        self._tb = None
        self._wandb_run = None
        self.bar: ProgressBar | None = None
        if tensorboard not in (True, False, "auto"):
            raise ValueError(f"tensorboard must be True, False or 'auto', got {tensorboard!r}")
        if not active:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        config = dict(config or {})
        if tensorboard:
            self._tb = self._open_tensorboard(required=tensorboard is True, resume_step=resume_step,
                                              config=config)
        if wandb:
            self._wandb_run = self._open_wandb({} if wandb is True else dict(wandb), config)
        self.bar = ProgressBar(progress_total_steps, start_step=resume_step or 0, stream=stream,
                               force=progress)

    # -------------------------------------------------------------- back ends

    def _open_tensorboard(self, *, required: bool, resume_step: int | None, config: dict) -> Any:
        if required:
            tbx = _require("tensorboardX", "tensorboard=True")
        else:
            try:
                import tensorboardX as tbx
            except ImportError:
                return None
        writer = tbx.SummaryWriter(
            logdir=str(self.run_dir / TENSORBOARD_DIR),
            # TensorBoard drops the events of earlier attempts from this step on.
            purge_step=None if resume_step is None else resume_step + 1,
            # The default name has 1 s resolution: a quick restart would overwrite the old file.
            filename_suffix=f".{os.getpid()}.{secrets.token_hex(3)}",
        )
        if config and not resume_step:
            writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)
        return writer

    def _open_wandb(self, kwargs: dict, config: dict) -> Any:
        wandb = _require("wandb", "W&B logging (wandb=...)")
        id_file = self.run_dir / WANDB_ID_FILE
        if "id" not in kwargs:
            if id_file.is_file():
                kwargs["id"] = id_file.read_text().strip()
            else:
                kwargs["id"] = secrets.token_hex(4)
        id_file.write_text(str(kwargs["id"]) + "\n")
        kwargs.setdefault("resume", "allow")
        kwargs.setdefault("dir", str(self.run_dir))
        kwargs.setdefault("name", self.run_dir.name)
        if config:
            kwargs.setdefault("config", config)
        return wandb.init(**kwargs)

    # -------------------------------------------------------------- logging

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Record ``metrics`` (scalars: Python / numpy / jax) at ``step``; returns the record."""
        if not self.active:
            return {}
        step = int(step)
        record: dict[str, Any] = {"step": step, "time": round(time.time(), 3)}
        for key, value in metrics.items():
            if key in ("step", "time"):
                continue
            record[str(key)] = _scalar(key, value)
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        numeric = {k: v for k, v in record.items()
                   if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for key, value in numeric.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=step)
        if self.bar is not None:
            self.bar.update(step, record, force_draw=True)
        return record

    def set_step(self, step: int) -> None:
        """Move the progress bar without logging (cheap; redraws at most 10 times a second)."""
        if self.active and self.bar is not None:
            self.bar.update(step)

    def write(self, message: str) -> None:
        """Print a message line to the bar's stream without garbling the bar."""
        if not self.active:
            return
        stream = self.bar.stream if self.bar is not None else sys.stderr
        if self.bar is not None:
            self.bar.clear()
        stream.write(message.rstrip("\n") + "\n")
        stream.flush()
        if self.bar is not None and self.bar.enabled:
            self.bar.update(self.bar.step, force_draw=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
