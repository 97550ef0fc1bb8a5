"""Preprocessing helpers: more processes than packing groups.

A group is packed by exactly one worker (its carry makes the stream sequential), but which
positions it will read next is known in advance (``g, g + G, ...``) and preprocessing a position
is a pure function of it. So when ``data.num_workers`` exceeds the local groups, the workers
beyond one per group become helpers of the packing workers: a packer keeps the next ``depth``
positions of each of its groups in flight on its helpers (``ReadAhead``), takes the results back
by position, and packs them in stream order: the same samples, in the same order, as if it read
them itself. Helpers send the sample's pixels already in the pixel dtype (the one rounding that
``pack`` would do), so bf16 runs move half the bytes.

A helper that raises sends the error, which names the record, to its packer; one that dies
closes its pipe; either way the packer raises a ``RecordError`` that reaches the main process as
a ``DataWorkerError``. Imports stay light at the top, as in ``workers``.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import pickle
import signal
import sys
import time
import traceback
from typing import Any


def helper_main(conn: Any, helper: int, payload: bytes) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    from data_pipelines.workers import lazy_package

    lazy_package("qwen2vl_jax")
    position = None
    try:
        spec = pickle.loads(payload)["spec"]
        from data_pipelines.group_stream import read_position

        while True:
            position = conn.recv()
            if position is None:
                return
            cpu = time.process_time()
            index, out = read_position(spec, position, cast_pixels=True)
            conn.send(("sample", position, index, out, time.process_time() - cpu))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the packer went away
    except BaseException as exc:  # noqa: BLE001 - reported to the packer, which raises
        with contextlib.suppress(Exception):
            conn.send(("error", position, f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc))))
        sys.exit(1)


class ReadAhead:
    """The packer's side: ``read(position)`` -> (record index, result), preprocessed on helpers."""

    def __init__(self, num_groups: int, conns: list[Any], names: list[str], depth: int):
        self.num_groups, self.conns, self.names, self.depth = num_groups, conns, names, depth
        self.in_flight: list[set[int]] = [set() for _ in conns]
        self.requested: set[int] = set()
        self.done: dict[int, tuple[int, dict]] = {}
        self.top: dict[int, int] = {}  # group -> the highest position requested
        self.cpu_seconds = 0.0  # the helpers' CPU time for the positions read so far

    def _request(self, position: int) -> None:
        if position in self.requested or position in self.done:
            return
        h = min(range(len(self.conns)), key=lambda i: len(self.in_flight[i]))
        self.in_flight[h].add(position)
        try:
            self.conns[h].send(position)
        except OSError:
            self._died(h)
        self.requested.add(position)

    def _died(self, h: int) -> None:
        from data_pipelines.group_stream import RecordError

        raise RecordError(f"{self.names[h]} died while preprocessing stream positions {sorted(self.in_flight[h])} "
                          "(killed, out of memory, or a crash in native code)")

    def _collect(self) -> None:
        from data_pipelines.group_stream import RecordError

        for conn in multiprocessing.connection.wait(self.conns):
            h = self.conns.index(conn)
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                self._died(h)
            if msg[0] == "error":
                raise RecordError(f"{self.names[h]}, stream position {msg[1]}: {msg[2]}\n--- helper traceback ---\n"
                                  f"{msg[3]}")
            _, position, index, out, cpu = msg
            self.in_flight[h].discard(position)
            self.requested.discard(position)
            self.done[position] = (index, out, cpu)

    def read(self, position: int) -> tuple[int, dict]:
        G = self.num_groups
        group = position % G
        self._request(position)
        nxt = max(self.top.get(group, position), position) + G
        while nxt <= position + (self.depth - 1) * G:  # keep the group's next positions in flight
            self._request(nxt)
            nxt += G
        self.top[group] = max(self.top.get(group, position), nxt - G)
        while position not in self.done:
            self._collect()
        index, out, cpu = self.done.pop(position)
        self.cpu_seconds += cpu
        return index, out

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.send(None)
