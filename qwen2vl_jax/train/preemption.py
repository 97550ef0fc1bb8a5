"""SIGTERM (a preemption notice on Cloud TPU and most schedulers) as a flag the training loop polls."""

from __future__ import annotations

import signal
import threading
from typing import Any


class PreemptionGuard:
    """Turns SIGTERM (a preemption notice on Cloud TPU / most schedulers) into a flag the training
    loop polls after each step: save a checkpoint, then exit cleanly. The previous handler is
    restored on exit. Only the main thread may install signal handlers."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, _frame) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()
