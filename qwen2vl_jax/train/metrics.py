"""Training metrics: the :class:`MetricsLogger` writes every logged step to ``metrics.jsonl``
(always), TensorBoard and W&B, and draws the progress bar.

The pieces live in their own modules and are re-exported here: the file format in
``train.metrics_jsonl`` (``METRICS_FILE``, ``read_metrics``, ``truncate_metrics``), tokens/s and
MFU in ``train.throughput`` (``Throughput``), the bar in ``train.progress`` (``ProgressBar``).

``metrics.jsonl`` is flushed line by line so a killed run loses nothing that was logged. A run
resumed from the checkpoint of step k passes ``resume_step=k``: lines of a killed attempt with
step > k are dropped (the file is rewritten) and TensorBoard is told to purge its events from
step k+1 on.

Optional back ends, all imported lazily: TensorBoard through ``tensorboardX``; W&B (``wandb``,
the ``[track]`` extra) only when ``wandb=`` is given. This module imports neither at load time.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Self

from qwen2vl_jax.train.metrics_jsonl import METRICS_FILE, make_record, read_metrics, truncate_metrics
from qwen2vl_jax.train.progress import ProgressBar
from qwen2vl_jax.train.throughput import Throughput

__all__ = ["METRICS_FILE", "MetricsLogger", "ProgressBar", "Throughput", "read_metrics", "truncate_metrics"]

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
        record = make_record(step, metrics)
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
