"""Counting steps whose loss or gradient was not finite (the step applied no update: see
``train/step.py``), and stopping after too many in a row.

The flag of a step is read one step late (``add`` keeps the device value, ``settle`` reads the
pending ones), so checking it never stalls the pipeline of dispatched steps.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class Counted:
    total: int  # non-finite steps since the watch started
    in_window: int  # of them, since the previous ``settle``


class NonFiniteWatch:
    def __init__(self, max_in_a_row: int):
        self.max_in_a_row = max_in_a_row
        self.total = 0
        self.in_a_row: collections.deque = collections.deque()  # (step, record indices)
        self._pending: list[tuple[int, Any, Any]] = []
        self._window = 0

    def add(self, step: int, finite: Any, record_indices: Any = None) -> None:
        """Record step ``step``'s device flag; settles every step before it."""
        if len(self._pending) >= 1:
            self._settle_upto(len(self._pending))
        self._pending.append((step, finite, record_indices))

    def _settle_upto(self, n: int) -> None:
        for step, finite, records in self._pending[:n]:
            if bool(np.asarray(finite)):
                self.in_a_row.clear()
                continue
            self.total += 1
            self._window += 1
            self.in_a_row.append((step, records))
            if len(self.in_a_row) >= self.max_in_a_row:
                detail = "; ".join(f"step {s}" + (f" (records {list(r)[:16]})" if r is not None else "")
                                   for s, r in self.in_a_row)
                raise FloatingPointError(
                    f"{len(self.in_a_row)} steps in a row had a non-finite loss or gradient and were not "
                    f"applied: {detail}; stopping (lower optimizer.learning_rate, check those records, or "
                    "raise max_nonfinite_steps)")
        del self._pending[:n]

    def settle(self) -> Counted:
        self._settle_upto(len(self._pending))
        counted = Counted(self.total, self._window)
        self._window = 0
        return counted
