"""The terminal progress bar of a training run: one carriage-return line."""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Mapping
from typing import IO, Any


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
