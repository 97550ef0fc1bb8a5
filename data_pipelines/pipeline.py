"""The training input pipeline: source -> group streams (read, preprocess, pack; on worker
processes) -> steps of fixed shape ``[grad_accum, groups, rows, ...]``. Host numpy out; the loop
does ``device_put``.

A step has ``num_groups`` packing groups globally (one per device; each ``rows`` packed rows
with its own vision stream). Group ``g``'s content is a pure function of (records, seed, g,
num_groups, budgets): it reads global stream positions ``g, g + G, g + 2G, ...`` of the epoch
order (``group_stream.EpochOrder``: each epoch its own permutation keyed by ``(seed, epoch)``)
and packs them first-fit with its own carry (``group_stream.GroupStream``). A process owns a
contiguous range of groups (``process_groups``) and yields its share of every step; the global
batch, the processes' shares concatenated in group order, is the same for any process count,
and the same for any number of worker processes (``workers``: preprocessing and packing never
run on the main process unless ``data.num_workers`` is 0, the in-process mode for debugging):

    data = PackedBatches(cfg, run.data, processor, rows=4, grad_accum=4, num_groups=jax.device_count(),
                         groups=process_groups(jax.device_count(), jax.process_index(), jax.process_count()),
                         seed=run.seed, pixel_dtype=run.runtime.dtype)
    item = next(data)   # {"batch": {key: [A, len(groups), ...]}, "stats": {...}, "record_indices": [...]}

State (``get_state``, small JSON): as of the last step the caller took (never of prefetched
work): per owned group its next stream position, the positions of its carried samples and its
counters, plus ``num_groups`` and the budgets. ``set_state`` takes a state holding at least the
owned groups (``merge_states`` joins the states of all processes), so a run may resume on
another process count; a different ``num_groups`` or budgets raises ``ValueError`` (the data
stream cannot carry over: it would be a different stream).

Bad records are never fatal: each is skipped, counted by reason and the first few are logged
with their record index and full reason. Samples over the text budget are skipped or, with
``data.overlong: truncate``, cut to it (``preprocess``) and counted as truncated.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines.group_stream import (
    MAX_LOGGED_BAD_RECORDS,
    EpochOrder,
    GroupStream,
    StreamSpec,
    empty_group_state,
    produce_step,
)
from data_pipelines.preprocess import RecordPreprocessor
from data_pipelines.sources import open_source
from qwen2vl_jax.layout.packing import PackingConfig, pixel_dtype_of

log = logging.getLogger(__name__)
STATE_FORMAT = "group_streams/1"

__all__ = ["DataConfig", "EpochOrder", "PackedBatches", "StateMismatch", "merge_states", "process_groups"]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The ``data:`` section of a training recipe.

    ``rows`` per group and ``grad_accum`` come from the run (per-device batch size); the budgets
    here are per row: a group holds ``rows x text_budget`` tokens and ``rows x patches_per_row``
    vision patches, whatever the images' sizes.
    """

    source: dict = dataclasses.field(default_factory=lambda: {"type": "synthetic_visual_qa"})
    labels: str = "assistant"  # "assistant" (SFT) | "all_text" (pre-training)
    text_budget: int = 1024  # tokens per row
    patches_per_row: int = 4096  # vision patches per row (shared by the group's rows)
    # Processes that preprocess and pack (0: all in the main process). One packs each local group
    # (at most); those beyond the local groups preprocess ahead for them (data_pipelines/read_ahead.py).
    num_workers: int = 0
    shuffle: bool = True  # a new permutation of the records every epoch
    overlong: str = "skip"  # a sample over text_budget: "skip" | "truncate" (cut its text's tail)
    min_pixels: int | None = None  # image processor overrides (None: the checkpoint's)
    max_pixels: int | None = None
    root: str | None = None  # folder relative image paths are resolved against


class StateMismatch(ValueError):
    """A saved data state that cannot carry over to this pipeline (the message says why)."""


class DeviceCountChanged(StateMismatch):
    """The saved data state has another number of packing groups (devices): a resume on another
    device count is allowed, and its data stream starts afresh."""


def process_groups(num_groups: int, process_index: int, process_count: int) -> range:
    """The contiguous groups process ``process_index`` of ``process_count`` owns."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
    if num_groups % process_count:
        raise ValueError(f"{num_groups} packing groups do not split evenly over {process_count} processes")
    per = num_groups // process_count
    return range(process_index * per, (process_index + 1) * per)


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One state holding the groups of several processes' ``get_state()`` (e.g. all-gathered)."""
    if not states:
        raise ValueError("no data states to merge")
    merged = {**states[0], "groups": {}}
    for i, state in enumerate(states):
        for key in ("format", "num_groups", "budgets", "steps"):
            if state.get(key) != merged.get(key):
                raise StateMismatch(f"data states disagree: state {i} has {key}={state.get(key)!r}, "
                                    f"state 0 has {merged.get(key)!r}")
        for g, group in state["groups"].items():
            if g in merged["groups"]:
                raise StateMismatch(f"data states overlap: group {g} appears twice")
            merged["groups"][g] = group
    return merged


class _InProcess:
    """``num_workers=0``: the group streams run here (debugging, tests)."""

    def __init__(self, spec: StreamSpec, groups: list[int], states: dict[int, dict], grad_accum: int):
        self.spec, self.grad_accum = spec, grad_accum
        self.streams = [GroupStream(spec, g, states[g]) for g in groups]
        self.produce_seconds = [0.0, 0.0]  # (wall, CPU) spent making the steps

    def next_step(self) -> tuple[dict[str, np.ndarray], dict[int, dict]]:
        wall, cpu = time.perf_counter(), time.process_time()
        lead = (self.grad_accum, len(self.streams))
        out = {k: np.empty(lead + shape, dtype) for k, (shape, dtype) in self.spec.shapes().items()}
        meta = produce_step(self.streams, self.grad_accum, out)
        spent = (time.perf_counter() - wall, time.process_time() - cpu)
        self.produce_seconds = [a + b for a, b in zip(self.produce_seconds, spent)]
        return out, meta

    def close(self) -> None:
        pass


class PackedBatches:
    """An iterator of fixed-shape training steps with a JSON state (see the module docstring).

    Args:
        cfg: the model config (token ids, merge size, patch dim).
        data: the ``DataConfig``.
        processor: a ``Qwen2VLProcessor``.
        rows: rows per packing group; grad_accum: microbatches per step.
        num_groups: packing groups per step, globally (one per device).
        groups: the groups this process owns and yields, in this order (default: all);
            ``process_groups(num_groups, process_index, process_count)`` for a pod.
        seed: shuffle seed.
        pixel_dtype: ``"float32"`` or ``"bfloat16"``: the dtype ``pixel_values`` travel in (use the
            compute dtype: the model casts pixels to it first, so bf16 is exact and half the bytes).
        base_dir: where relative source paths in ``data.source`` are resolved.
        prefetch: steps each worker may work ahead.
        timeout_s: a worker silent this long is an error (None: wait forever).
        process_index / process_count: the previous interface (``groups`` = groups per process,
            an int): the process owns ``process_groups(groups * process_count, ...)``, and a state
            that cannot carry over starts the stream afresh with a warning instead of raising.
    """

    def __init__(self, cfg: Any, data: DataConfig, processor: Any, *, rows: int, grad_accum: int = 1,
                 num_groups: int | None = None, groups: Sequence[int] | int | None = None, seed: int = 0,
                 pixel_dtype: str = "float32", base_dir: str | None = None, prefetch: int = 2,
                 timeout_s: float | None = 900.0, process_index: int = 0, process_count: int = 1):
        self._legacy = isinstance(groups, int)
        if self._legacy:  # the previous interface: groups per process
            num_groups = groups * process_count
            groups = process_groups(num_groups, process_index, process_count)
        num_groups = num_groups or (len(groups) if groups is not None else 1)
        groups = list(range(num_groups) if groups is None else groups)
        if min(rows, grad_accum, num_groups, prefetch) < 1 or not groups:
            raise ValueError(f"rows, grad_accum, num_groups, prefetch and the owned groups must be >= 1, got "
                             f"{rows}, {grad_accum}, {num_groups}, {prefetch}, {groups}")
        if len(set(groups)) != len(groups) or not all(0 <= g < num_groups for g in groups):
            raise ValueError(f"groups must be distinct and in [0, num_groups={num_groups}), got {groups}")
        if data.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {data.num_workers}")
        self.cfg, self.data, self.rows, self.grad_accum = cfg, data, rows, grad_accum
        self.num_groups, self.groups, self.seed = num_groups, groups, seed
        self.prefetch, self.timeout_s = prefetch, timeout_s
        self.text_budget = data.text_budget
        self.patch_budget = rows * data.patches_per_row
        records = open_source(dict(data.source), base_dir=base_dir)
        if len(records) == 0:
            raise ValueError(f"data source {data.source} has no records")
        preprocess = RecordPreprocessor(processor, labels=data.labels, max_tokens=self.text_budget,
                                        max_patches=self.patch_budget, root=data.root, overlong=data.overlong)
        self.spec = StreamSpec(records=records, preprocess=preprocess, packing=PackingConfig.of(cfg),
                               order=EpochOrder(len(records), seed, data.shuffle), num_groups=num_groups,
                               rows=rows, text_budget=self.text_budget, patch_budget=self.patch_budget,
                               pixel_dtype=pixel_dtype_of(pixel_dtype).name)
        self._states = {g: empty_group_state(g) for g in groups}  # as of the last step handed out
        self._source: Any = None  # started on the first step (after a possible set_state)
        self._logged = Counter()  # bad-record log lines written, per level
        self.batches = 0  # steps handed out
        self._closed = False

    # ------------------------------------------------------------------ state

    @property
    def skipped(self) -> Counter:
        """Skipped records by reason, summed over the owned groups (as of the last step taken)."""
        total: Counter = Counter()
        for state in self._states.values():
            total.update(state["skipped"])
        return total

    @property
    def truncated(self) -> int:
        return sum(s["truncated"] for s in self._states.values())

    @property
    def records_read(self) -> int:
        return sum(s["records_read"] for s in self._states.values())

    def get_state(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "num_groups": self.num_groups, "budgets": self.spec.budgets,
                "seed": self.seed, "num_records": self.spec.order.num_records, "steps": self.batches,
                "groups": {str(g): _copy_state(self._states[g]) for g in self.groups}}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (this pipeline's or a merge of several processes'); it must hold
        every owned group. ``StateMismatch`` (a ValueError) when it cannot carry over."""
        try:
            self._set_state(state)
        except StateMismatch as err:
            if not self._legacy:
                raise
            log.warning("%s; starting the data stream afresh", err)

    def _set_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            found = state.get("format", "no per-group streams") if isinstance(state, dict) else type(state).__name__
            raise StateMismatch(f"the data state cannot carry over: it has format {found!r}, this pipeline "
                                f"reads {STATE_FORMAT!r} (it was written by an earlier input pipeline)")
        if state["num_groups"] != self.num_groups:
            raise DeviceCountChanged(f"the data state cannot carry over: it was written with num_groups="
                                f"{state['num_groups']} packing groups per step, this run has {self.num_groups} "
                                "(one per device: a different device count makes a different data stream)")
        if state["budgets"] != self.spec.budgets:
            raise StateMismatch(f"the data state cannot carry over: its packing budgets {state['budgets']} differ "
                                f"from this run's {self.spec.budgets} (rows per group, tokens per row, patches "
                                "per group): the groups would pack differently")
        missing = [g for g in self.groups if str(g) not in state["groups"]]
        if missing:
            raise StateMismatch(f"the data state has no state for groups {missing} of this process "
                                "(merge the states of every process with merge_states)")
        states = {g: _copy_state(state["groups"][str(g)]) for g in self.groups}
        for g, s in states.items():
            bad = [p for p in [s["next_position"], *s["carry"]] if int(p) % self.num_groups != g]
            if bad:
                raise StateMismatch(f"the data state of group {g} holds positions {bad[:4]} of another group")
        self._stop()
        self._states, self.batches = states, int(state["steps"])

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> PackedBatches:
        return self

    def _start(self) -> None:
        if self.data.num_workers == 0:
            self._source = _InProcess(self.spec, self.groups, self._states, self.grad_accum)
        else:
            from data_pipelines.workers import WorkerPool

            self._source = WorkerPool(self.spec, self.groups, self._states, self.grad_accum, self.data.num_workers,
                                      prefetch=self.prefetch, timeout_s=self.timeout_s)

    def _stop(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            source.close()

    def __next__(self) -> dict[str, Any]:
        """One step: ``{"batch": {key: [A, len(groups), ...]}, "stats": {...}, "record_indices":
        [[...] per owned group]}`` (host numpy). ``record_indices[j]``: the source indices of the
        records packed in group ``groups[j]`` this step, microbatch by microbatch, row by row."""
        if self._closed:
            raise RuntimeError("PackedBatches is closed")
        try:
            if self._source is None:
                self._start()
            batch, meta = self._source.next_step()
        except BaseException:
            self._stop()
            raise
        parts = [s for g in self.groups for s in meta[g]["stats"]]
        stats = {k: float(np.mean([p[k] for p in parts])) for k in ("text_padding_fraction", "patch_padding_fraction")}
        for k in ("samples", "text_tokens", "vision_patches"):
            stats[k] = float(sum(p[k] for p in parts))
        for g in self.groups:
            self._states[g] = meta[g]["state"]
            for level, line in meta[g]["events"]:
                if self._logged[level] < MAX_LOGGED_BAD_RECORDS:
                    self._logged[level] += 1
                    log.log(level, "%s", line)
        stats["skipped_records"] = float(sum(self.skipped.values()))
        stats["truncated_records"] = float(self.truncated)
        self.batches += 1
        return {"batch": batch, "stats": stats, "record_indices": [list(meta[g]["records"]) for g in self.groups]}

    def close(self) -> None:
        """Stop the worker processes (idempotent; the state stays readable)."""
        self._closed = True
        self._stop()

    def __enter__(self) -> PackedBatches:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._stop()
        except Exception:  # noqa: BLE001, S110 - never raise from a finaliser
            pass


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    return {"next_position": int(state["next_position"]), "carry": [int(p) for p in state["carry"]],
            "skipped": {str(k): int(v) for k, v in state["skipped"].items()}, "truncated": int(state["truncated"]),
            "records_read": int(state["records_read"]), "microbatches": int(state["microbatches"])}
