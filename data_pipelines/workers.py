"""Worker processes that preprocess AND pack group streams, and hand steps to the main process.

Why not grain's ``mp_prefetch``: it slices one dataset over its workers element by element, so a
stateful transformation inside it (packing, with a carry) changes its output with the number of
workers (grain's own documentation of ``mp_prefetch`` says so); one grain pipeline per group
would tie the process count to the group count and hide the per-group state inside grain's.
Here a group's whole stream (read, preprocess, pack) runs in exactly one process, so a group's
content cannot depend on how groups are spread over workers.

Layout: the main process owns ``groups``; worker ``w`` of ``W`` packs ``groups[w::W]`` (round
robin; ``W = min(num_workers, len(groups))``); the processes beyond ``W`` are preprocessing
helpers of the workers (``read_ahead``: helper ``h`` serves worker ``h % W``). Steps live in
slots of shared memory, each one whole step ``[grad_accum, len(groups), ...]``, and every worker
writes its own groups' columns of the slot the main process assigned to that step, so a step
needs no assembly and no copy: the main process hands out numpy arrays that *are* the slot.
Those arrays hold a lease on it; when the caller drops the last of them (or of any array
derived from them, a zero-copy ``device_put`` included), the slot is free for a later step.
The main process assigns slots ``prefetch`` steps ahead of the step it hands out, so the workers
work at most that far ahead; a slot the caller still holds is never written (a caller that keeps
batches makes the pool of slots grow instead: ``prefetch + 2`` slots when it keeps only the
current one, as the training loop does: it still holds step ``n`` while it asks for ``n + 1``).
Only the small ``meta`` (stats, record indices, group states) is pickled.

Failure handling: a worker that raises sends the traceback and exits; one that dies (killed, out
of memory, a crash in native code) closes its pipe and its process sentinel fires; the main
process waits on both, so either becomes a ``DataWorkerError`` naming the worker, its groups and
the error (a ``RecordError`` inside names the record), never a hang. A worker that sends nothing
for ``timeout_s`` is an error too. Workers ignore SIGINT / SIGTERM (the main process decides when
they stop) and exit when the main process's end of their pipe closes.

Workers are ``spawn``-ed (no forked copy of the main process's JAX runtime or threads) with
``JAX_PLATFORMS=cpu``, and never initialise JAX: this module imports only the standard library
and numpy at the top, and a worker imports the ``qwen2vl_jax`` package lazily (its
``__init__`` imports the model, hence jax; a worker needs only host-side submodules such as
``layout`` and ``processing``, so the package body runs only if a top-level name is used).
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import time
import traceback
import weakref
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from data_pipelines.read_ahead import helper_main

_ALIGN = 64


class DataWorkerError(RuntimeError):
    """A data worker process raised, died or stalled."""


class SlotLayout:
    """Where each array of one step ``[lead..., shape]`` lives in a flat shared-memory block."""

    def __init__(self, shapes: dict[str, tuple[tuple[int, ...], Any]], lead: tuple[int, ...]):
        self.entries: list[tuple[str, tuple[int, ...], np.dtype, int]] = []
        offset = 0
        for key, (shape, dtype) in shapes.items():
            full = tuple(lead) + tuple(shape)
            dtype = np.dtype(dtype)
            self.entries.append((key, full, dtype, offset))
            offset += -(-int(np.prod(full, dtype=np.int64)) * dtype.itemsize // _ALIGN) * _ALIGN
        self.nbytes = max(offset, _ALIGN)

    def views(self, buf: Any) -> dict[str, np.ndarray]:
        return {key: np.ndarray(shape, dtype, buffer=buf, offset=off) for key, shape, dtype, off in self.entries}


def lazy_package(name: str) -> None:
    """Register package ``name`` without running its ``__init__`` until a top-level name of it
    is used (submodule imports work at once)."""
    import importlib.util
    import types

    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return
    module = importlib.util.module_from_spec(spec)

    class _Lazy(types.ModuleType):
        def __getattr__(self, attr: str) -> Any:
            if attr.startswith("__"):
                raise AttributeError(attr)
            self.__class__ = types.ModuleType
            spec.loader.exec_module(self)
            return getattr(self, attr)

    module.__class__ = _Lazy
    sys.modules[name] = module


def _worker_main(conn: Any, worker: int, payload: bytes, helpers: list[Any]) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    lazy_package("qwen2vl_jax")
    slots: dict[int, shared_memory.SharedMemory] = {}
    views: dict[int, dict[str, np.ndarray]] = {}
    ahead = None
    try:
        job = pickle.loads(payload)
        from data_pipelines.group_stream import GroupStream, produce_step
        from data_pipelines.read_ahead import ReadAhead

        spec = job["spec"]
        if helpers:
            names = [f"preprocessing helper {i} of data worker {worker}" for i in range(len(helpers))]
            ahead = ReadAhead(spec.num_groups, helpers, names, depth=4 * len(helpers))
        streams = [GroupStream(spec, g, job["states"].get(g), reader=ahead and ahead.read) for g in job["groups"]]
        W, layout = job["num_workers"], job["layout"]
        plan: dict[int, tuple[int, str]] = {}  # step -> (slot, shared-memory name), as the main process assigns
        step = 0
        while True:
            while conn.poll() or step not in plan:
                msg = conn.recv()
                if msg is None:
                    return
                plan.update((m, (slot, name)) for m, slot, name in msg)
            slot, name = plan.pop(step)
            if slot not in views:
                slots[slot] = shared_memory.SharedMemory(name=name)
                views[slot] = {k: v[:, worker::W] for k, v in layout.views(slots[slot].buf).items()}
            wall, cpu = time.perf_counter(), time.process_time() + (ahead.cpu_seconds if ahead else 0.0)
            meta = produce_step(streams, job["grad_accum"], views[slot])
            cpu = time.process_time() + (ahead.cpu_seconds if ahead else 0.0) - cpu  # helpers' share included
            conn.send(("step", step, meta, (time.perf_counter() - wall, cpu)))
            step += 1
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the main process went away
    except BaseException as exc:  # noqa: BLE001 - reported to the main process, which raises
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc))))
        sys.exit(1)
    finally:
        if ahead is not None:
            ahead.close()
        views.clear()
        for shm in slots.values():
            with contextlib.suppress(Exception):
                shm.close()


@contextlib.contextmanager
def _child_environment(**env: str):
    """Environment variables the spawned children start with (restored in this process after)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class WorkerPool:
    """Runs the group streams of ``groups`` on worker processes (module docstring)."""

    def __init__(self, spec: Any, groups: list[int], states: dict[int, dict], grad_accum: int, num_workers: int,
                 prefetch: int = 2, timeout_s: float | None = 900.0):
        self.groups, self.grad_accum, self.timeout_s = list(groups), grad_accum, timeout_s
        self.num_workers = max(1, min(num_workers, len(self.groups)))  # packing workers
        self.num_helpers = max(0, num_workers - self.num_workers)  # preprocessing helpers (read_ahead)
        self.shapes = spec.shapes()
        self._procs: list[Any] = []
        self._helpers: list[Any] = []
        self._conns: list[Any] = []
        self.prefetch = prefetch
        self._layout = layout = SlotLayout(self.shapes, (grad_accum, len(self.groups)))
        self._shms: list[shared_memory.SharedMemory] = []
        self._views: list[dict[str, np.ndarray]] = []
        self._free: list[int] = []  # slots no step uses
        self._slot_of: dict[int, int] = {}  # step -> its slot, from assignment until the caller drops it
        self._assigned = 0  # steps 0 .. _assigned - 1 have slots
        self._step = 0
        self._released: collections.deque = collections.deque()  # filled by the leases' finalizers
        self.wait_seconds = 0.0  # main-process time spent waiting for steps
        self.produce_seconds = [0.0, 0.0]  # (wall, CPU) the workers spent making the steps taken
        ctx = multiprocessing.get_context("spawn")
        spec_only = pickle.dumps({"spec": spec})
        try:
            for _ in range(prefetch + 2):  # see the module docstring
                self._free.append(self._new_slot())
            for w in range(self.num_workers):
                ends = []
                for h in range(w, self.num_helpers, self.num_workers):  # helper h serves worker h % W
                    mine_end, its_end = ctx.Pipe(duplex=True)
                    helper = ctx.Process(target=helper_main, args=(its_end, h, spec_only), name=f"data-helper-{h}",
                                         daemon=True)
                    with _child_environment(JAX_PLATFORMS="cpu"):
                        helper.start()
                    its_end.close()
                    self._helpers.append(helper)
                    ends.append(mine_end)
                mine = self.groups[w::self.num_workers]
                payload = pickle.dumps({"spec": spec, "groups": mine, "states": {g: states[g] for g in mine},
                                        "grad_accum": grad_accum, "layout": layout, "num_workers": self.num_workers})
                here, there = ctx.Pipe(duplex=True)
                proc = ctx.Process(target=_worker_main, args=(there, w, payload, ends),
                                   name=f"data-worker-{w}", daemon=True)
                with _child_environment(JAX_PLATFORMS="cpu"):
                    proc.start()
                there.close()
                for end in ends:  # the worker holds them now
                    end.close()
                self._procs.append(proc)
                self._conns.append(here)
            self._assign_upto(prefetch - 1)
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs + self._helpers]

    def _who(self, w: int) -> str:
        proc = self._procs[w]
        return f"data worker {w} (pid {proc.pid}, groups {self.groups[w::self.num_workers]})"

    def _receive(self, w: int) -> tuple:
        conn, proc = self._conns[w], self._procs[w]
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while True:
            wait = 5.0 if deadline is None else max(0.0, min(5.0, deadline - time.monotonic()))
            ready = multiprocessing.connection.wait([conn, proc.sentinel], timeout=wait)
            if conn in ready or conn.poll():
                try:
                    return conn.recv()
                except (EOFError, OSError):
                    pass  # the worker is gone: its exit code says how
            if conn in ready or proc.sentinel in ready:
                proc.join(5.0)
                raise DataWorkerError(f"{self._who(w)} exited with code {proc.exitcode} before sending step "
                                      f"{self._step} (killed, out of memory, or a crash in native code)")
            if deadline is not None and time.monotonic() >= deadline:
                raise DataWorkerError(f"{self._who(w)} sent no step {self._step} in {self.timeout_s:.0f} s")

    @property
    def num_slots(self) -> int:
        return len(self._shms)

    def _new_slot(self) -> int:
        self._shms.append(shared_memory.SharedMemory(create=True, size=self._layout.nbytes))
        self._views.append(self._layout.views(self._shms[-1].buf))
        return len(self._shms) - 1

    def _send_all(self, msg: Any) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):  # a worker that has just failed: its error comes next
                conn.send(msg)

    def _assign_upto(self, last: int) -> None:
        """Give steps up to ``last`` their slots: a free one, or a new one if the caller holds all."""
        plan = []
        while self._assigned <= last:
            slot = self._free.pop(0) if self._free else self._new_slot()
            self._slot_of[self._assigned] = slot
            plan.append((self._assigned, slot, self._shms[slot].name))
            self._assigned += 1
        if plan:
            self._send_all(plan)

    def _release(self, step: int) -> None:  # a lease's finalizer: any thread, so only a deque append
        self._released.append(step)

    def next_step(self) -> tuple[dict[str, np.ndarray], dict[int, dict]]:
        """The next step's arrays ``[grad_accum, len(groups), ...]`` (views of its shared-memory
        slot, leased until the caller drops them) and its meta per group."""
        n = self._step
        while self._released:
            self._free.append(self._slot_of.pop(self._released.popleft()))
        self._assign_upto(n + self.prefetch)  # the workers make up to `prefetch` steps past this one
        meta: dict[int, dict] = {}
        start = time.monotonic()
        for w in range(self.num_workers):
            msg = self._receive(w)
            if msg[0] == "error":
                if msg[1].startswith("NoUsableRecords: "):  # the data's fault: a user error, one line
                    from data_pipelines.group_stream import NoUsableRecords

                    raise NoUsableRecords(msg[1][len("NoUsableRecords: "):])
                raise DataWorkerError(f"{self._who(w)} failed: {msg[1]}\n--- worker traceback ---\n{msg[2]}")
            _, step, part, spent = msg
            self.produce_seconds = [a + b for a, b in zip(self.produce_seconds, spent)]
            if step != n:
                raise DataWorkerError(f"{self._who(w)} sent step {step}, expected {n}")
            meta.update(part)
        self.wait_seconds += time.monotonic() - start
        lease = _Lease()
        weakref.finalize(lease, self._release, n)
        self._step += 1
        slot = self._slot_of[n]
        return {k: _leased(view, lease, self._shms[slot]) for k, view in self._views[slot].items()}, meta

    def close(self) -> None:
        """Stop the workers (a short grace, then SIGKILL: they ignore SIGTERM) and free the memory."""
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.send(None)
        deadline = time.monotonic() + 1.0
        for proc in self._procs + self._helpers:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.close()
        self._views.clear()
        for shm in self._shms:
            # Unlinked now (the name goes; the memory stays while mapped), closed (unmapped) by its
            # finalizer once nothing refers to it: a step the caller still holds keeps it alive.
            with contextlib.suppress(Exception):
                shm.unlink()
        self._procs, self._helpers, self._conns, self._shms = [], [], [], []


class _Lease:
    """Alive while any array of one handed-out step is (``weakref.finalize`` returns the slot)."""


class _Exposed:
    """A slot view re-exported through ``__array_interface__``: the numpy array made from it keeps
    this object (hence the lease) as its base, and so does every array derived from that one. It
    holds the ``SharedMemory`` too, which unmaps itself only when the last reference goes, so the
    mapping outlives the caller's arrays, ``close`` included."""

    def __init__(self, view: np.ndarray, lease: _Lease, shm: shared_memory.SharedMemory):
        self.lease, self.shm = lease, shm
        self.__array_interface__ = {"shape": view.shape, "strides": view.strides, "version": 3,
                                    "typestr": np.dtype(f"u{view.dtype.itemsize}").str,
                                    "data": (view.__array_interface__["data"][0], False)}


def _leased(view: np.ndarray, lease: _Lease, shm: shared_memory.SharedMemory) -> np.ndarray:
    # Through an unsigned int of the same width, then viewed as the real dtype (bfloat16 has no
    # array-interface type string of its own); the base chain still ends at the _Exposed object.
    return np.asarray(_Exposed(view, lease, shm)).view(view.dtype)
