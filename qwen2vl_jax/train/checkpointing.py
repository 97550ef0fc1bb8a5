"""Training checkpoints (Orbax CheckpointManager): nothing is lost on a crash, a full disk or a
corrupt file.

Each checkpoint step holds three items:
  * ``state``: params, optimizer state and the step (Orbax PyTree, restorable into any mesh from
    abstract arrays carrying shardings);
  * ``data_iter``: the data iterator's state (JSON), so a resumed run continues the exact stream;
  * ``config``: the resolved run config (JSON).

Saves are asynchronous (training continues while Orbax writes). A step counts as complete only
once Orbax has committed it AND our manifest (``qwen2vl_manifest.json``: every file and its size)
has been written after the commit; only then are older steps beyond ``keep_last`` deleted, so a
crash or a failed save never leaves fewer valid checkpoints than before. On resume, steps are
tried newest first: a step without a manifest, with a file missing or of the wrong size, or that
Orbax cannot read is skipped with a message naming it and the reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from qwen2vl_jax.train.preemption import PreemptionGuard

MANIFEST = "qwen2vl_manifest.json"


class CheckpointWriteError(RuntimeError):
    """A save failed (disk full, directory unwritable): the previous checkpoints are intact."""


def _manifest_of(step_dir: epath.Path) -> dict[str, int]:
    # epath: the same code for local disks and buckets (gs://), as Orbax itself uses.
    step_dir = epath.Path(step_dir)
    out: dict[str, int] = {}
    for root, _, files in step_dir.walk():
        for name in files:
            if name != MANIFEST:
                path = epath.Path(root) / name
                out[str(path.relative_to(step_dir))] = int(path.stat().length)
    return dict(sorted(out.items()))


def check_step_dir(step_dir: epath.Path) -> str | None:
    """Why ``step_dir`` is not a complete checkpoint, or None if it is."""
    step_dir = epath.Path(step_dir)
    manifest = step_dir / MANIFEST
    if not manifest.is_file():
        return "incomplete (no manifest: the save never finished)"
    try:
        want = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable manifest ({e})"
    have = _manifest_of(step_dir)
    missing = sorted(set(want) - set(have))
    if missing:
        return f"{len(missing)} file(s) missing, e.g. {missing[0]}"
    wrong = [f"{k} ({have[k]} bytes, expected {want[k]})" for k in want if have[k] != want[k]]
    if wrong:
        return f"{len(wrong)} file(s) truncated or changed, e.g. {wrong[0]}"
    return None


def _replicated() -> jax.sharding.NamedSharding:
    # Every device of every process holds a copy: each process has addressable shards (a
    # single-device target on process 0's first device would leave the others none).
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("all",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    """The restore target of one leaf: its shape, dtype and sharding; a host array (no
    sharding, e.g. the step counter) restores replicated, whatever mesh or process count saved it."""
    sharding = getattr(x, "sharding", None)
    if sharding is None:
        sharding = _replicated()
    return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype,
                                sharding=sharding)


class TrainCheckpointer:
    def __init__(self, directory: str | os.PathLike, keep_last: int = 3, async_save: bool = True,
                 say: Callable[[str], None] = print):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = epath.Path(directory)
        if "://" not in str(directory):
            self.directory = self.directory.absolute()
        self.keep_last = keep_last
        self.say = say
        # Deletion is ours (after verification), not Orbax's max_to_keep.
        options = ocp.CheckpointManagerOptions(max_to_keep=None, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._pending: int | None = None  # a saved step whose manifest is not written yet

    def _step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def _finish_pending(self) -> None:
        """Wait for the in-flight save, verify it, write its manifest, then drop old steps."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # Orbax re-raises the background writer's error here
            step, self._pending = self._pending, None
            raise self._write_error(step, e) from e
        if self._pending is None:
            return
        step, self._pending = self._pending, None
        step_dir = self._step_dir(step)
        if not step_dir.is_dir():
            raise self._write_error(step, FileNotFoundError(f"{step_dir} was not created"))
        try:
            self._write_manifest(step)
        except OSError as e:
            raise self._write_error(step, e) from e
        valid = self.valid_steps()
        for old in valid[:-self.keep_last]:
            self._manager.delete(old)

    def _write_manifest(self, step: int) -> None:
        step_dir = self._step_dir(step)
        if jax.process_index() == 0:  # one writer; every host wrote its shards before the commit
            (step_dir / MANIFEST).write_text(json.dumps(_manifest_of(step_dir)))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"qwen2vl_manifest_{step}")

    def _write_error(self, step: int | None, e: BaseException) -> CheckpointWriteError:
        intact = [s for s in self.all_steps() if s != step and check_step_dir(self._step_dir(s)) is None]
        kept = f"the checkpoint of step {intact[-1]} is intact" if intact else "no earlier checkpoint exists"
        return CheckpointWriteError(f"could not write the checkpoint of step {step} to {self.directory}: "
                                    f"{type(e).__name__}: {e}; {kept}")

    def save(self, step: int, params: Any, opt_state: Any, *, data_iter_state: dict | None = None,
             config: dict | None = None, force: bool = False) -> bool:
        """Start saving ``step`` (returns at once when async; the previous save is verified first).
        ``force`` saves even if the manager's interval policy would skip it (e.g. on preemption)."""
        self._finish_pending()
        for name, tree in (("params", params), ("optimizer state", opt_state)):
            bad = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
                   if np.issubdtype(np.dtype(x.dtype), np.floating) and not bool(jax.numpy.isfinite(x).all())]
            if bad:  # never write a non-finite value into a checkpoint
                raise FloatingPointError(f"step {step}: {name} contain non-finite values at {bad[:3]}; not saving")
        state = {"params": params, "opt_state": opt_state, "step": np.asarray(step, np.int32)}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iter=ocp.args.JsonSave(data_iter_state or {}),
            config=ocp.args.JsonSave(config or {}),
        )
        try:
            saved = self._manager.save(step, args=args, force=force)
        except Exception as e:
            raise self._write_error(step, e) from e
        if saved:
            self._pending = step
        return saved

    def all_steps(self) -> list[int]:
        if not self.directory.exists():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir())

    def valid_steps(self) -> list[int]:
        return [s for s in self.all_steps() if check_step_dir(self._step_dir(s)) is None]

    def latest_step(self) -> int | None:
        """The newest complete (manifested) step."""
        steps = self.valid_steps()
        return steps[-1] if steps else None

    def restore(self, params_like: Any, opt_state_like: Any, step: int | None = None
                ) -> tuple[int, Any, Any, dict, dict]:
        """Restore (step, params, opt_state, data_iter_state, config) from ``step`` (default: the
        newest step that is complete and readable, falling back past broken ones with a
        message). ``*_like`` give structure, shapes, dtypes and, if set, shardings."""
        abstract = jax.tree.map(_abstract, {"params": params_like, "opt_state": opt_state_like,
                                            "step": np.asarray(0, np.int32)})
        candidates = [step] if step is not None else list(reversed(self.all_steps()))
        if not candidates:
            raise ValueError(f"{self.directory}: no checkpoint to restore")
        problems = []
        finalized = set(self._manager.all_steps())  # Orbax committed these (atomic rename / commit file)
        for s in candidates:
            why = check_step_dir(self._step_dir(s))
            # Killed after Orbax committed the step but before our manifest was written: the step
            # is complete by Orbax's own commit protocol; reading every array below verifies it.
            unverified = why is not None and why.startswith("incomplete") and s in finalized
            if why is None or unverified:
                try:
                    out = self._manager.restore(s, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), data_iter=ocp.args.JsonRestore(),
                        config=ocp.args.JsonRestore()))
                except Exception as e:  # a corrupt array file: Orbax / tensorstore errors
                    why = f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                else:
                    why = None
                    if unverified:
                        problems.append(f"the checkpoint of step {s} has no manifest (the run stopped just "
                                        "after Orbax committed it); every array read back, manifest written")
                        self._write_manifest(s)
            if why is None:
                if problems:
                    self.say(f"resuming from step {s}: " + "; ".join(problems))
                st = out.state
                return int(st["step"]), st["params"], st["opt_state"], dict(out.data_iter or {}), dict(out.config or {})
            problems.append(f"the checkpoint of step {s} is {why}")
            if step is not None:
                break
        raise ValueError(f"{self.directory}: no valid checkpoint: " + "; ".join(problems))

    def saved_config(self, step: int) -> dict:
        """The run config stored with ``step`` (without restoring the arrays)."""
        path = self._step_dir(step) / "config" / "metadata"
        if not path.is_file():
            cands = list((self._step_dir(step) / "config").glob("*"))
            path = cands[0] if cands else path
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def wait(self) -> None:
        self._finish_pending()

    def close(self) -> None:
        try:
            self._finish_pending()
        finally:
            self._manager.close()

    def __enter__(self) -> TrainCheckpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["CheckpointWriteError", "PreemptionGuard", "TrainCheckpointer", "check_step_dir"]
