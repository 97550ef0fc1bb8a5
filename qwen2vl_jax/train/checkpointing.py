"""Training checkpoints (Orbax CheckpointManager) and a preemption guard.

Each checkpoint step holds three items:
  * ``state``: params, optimizer state and the step (Orbax PyTree, restorable into any mesh from
    abstract arrays carrying shardings);
  * ``data_iter``: the data iterator's state (JSON), so a resumed run continues the exact stream;
  * ``config``: the resolved run config (JSON).
Saves are asynchronous (training continues while Orbax writes); ``keep_last`` bounds disk use.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class TrainCheckpointer:
    def __init__(self, directory: str | os.PathLike, keep_last: int = 3, async_save: bool = True):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep_last, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, params: Any, opt_state: Any, *, data_iter_state: dict | None = None,
             config: dict | None = None, force: bool = False) -> bool:
        """Start saving ``step`` (returns at once when async). ``force`` saves even if the
        manager's interval policy would skip it (e.g. on preemption)."""
        state = {"params": params, "opt_state": opt_state, "step": np.asarray(step, np.int32)}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iter=ocp.args.JsonSave(data_iter_state or {}),
            config=ocp.args.JsonSave(config or {}),
        )
        return self._manager.save(step, args=args, force=force)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def restore(self, params_like: Any, opt_state_like: Any, step: int | None = None
                ) -> tuple[int, Any, Any, dict, dict]:
        """Restore (step, params, opt_state, data_iter_state, config) from ``step`` (default: the
        latest). ``*_like`` give structure, shapes, dtypes and, if set, shardings."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"{self.directory}: no checkpoint to restore")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                {"params": params_like, "opt_state": opt_state_like,
                                 "step": np.asarray(0, np.int32)})
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data_iter=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore()))
        state = out.state
        return int(state["step"]), state["params"], state["opt_state"], dict(out.data_iter or {}), dict(out.config or {})

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> TrainCheckpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
