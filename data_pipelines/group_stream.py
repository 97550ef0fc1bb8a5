"""One packing group's stream: a pure function of (records, seed, group g, groups G, budgets).

The global record stream is epoch 0's permutation of all records, then epoch 1's, ... (see
``EpochOrder``). Group ``g`` of ``G`` reads global stream positions ``g, g + G, g + 2G, ...``:
the groups split every epoch between them without overlap, and what group ``g`` reads does not
depend on how many processes or worker processes share the groups. It draws samples until its
text or patch budget is covered, first-fit packs them into ``rows`` rows (``layout.packing``),
and carries the samples that did not fit into its own next microbatch. Its ``m``-th microbatch
is therefore the same wherever and by whomever it is made.

State (``GroupStream.state``): the next global position, the positions of the carried samples,
and the counters, small JSON. The carried samples are re-made from their positions on restore
(preprocessing is a pure function of the record), so a restored group continues exactly.

Bad records are never fatal: each is skipped, counted by reason, and the group's first
``MAX_LOGGED_BAD_RECORDS`` are reported (``drain_events``) with their record index and reason;
the pipeline logs them when the step that read them is consumed. A record whose *source* raises
(not a bad record: the source itself failed, e.g. an unreadable disk) is a ``RecordError`` that
names the group, the record and its stream position.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from data_pipelines.mixture import _mix64, permute
from data_pipelines.preprocess import RecordPreprocessor, reason_key
from qwen2vl_jax.layout.packing import PackingConfig, first_fit, pack, packed_batch_shapes, pixel_dtype_of

MAX_LOGGED_BAD_RECORDS = 20
_EPOCH_SALT = 0x2545F4914F6CDD1D
STAT_KEYS = ("text_padding_fraction", "patch_padding_fraction", "samples", "text_tokens", "vision_patches")


class RecordError(RuntimeError):
    """A record's source or packing raised (a fault, not a bad record to skip)."""


class NoUsableRecords(ValueError):
    """Every record of the source is bad (a user error: the data, not the code)."""


@dataclasses.dataclass(frozen=True)
class EpochOrder:
    """Which record each global stream position reads: position ``k`` is in epoch
    ``k // num_records``; epoch ``e`` is a keyed pseudo-random permutation (``mixture.permute``)
    whose key hashes ``(seed, e)``, so every epoch has its own order, each a pure function of
    ``(seed, epoch)`` (grain's ``shuffle`` keys epoch ``e`` with ``seed + e``: run ``seed + 1``
    would replay run ``seed`` one epoch late). O(1) per position, so any position can be re-read."""

    num_records: int
    seed: int = 0
    shuffle: bool = True

    def __post_init__(self):
        if self.num_records < 1:
            raise ValueError(f"need at least one record, got {self.num_records}")

    def epoch_key(self, epoch: int) -> int:
        return _mix64(_mix64(int(self.seed)) ^ _mix64(int(epoch) ^ _EPOCH_SALT))

    def locate(self, position: int) -> tuple[int, int]:
        """Global stream position -> (epoch, record index)."""
        epoch, offset = divmod(int(position), self.num_records)
        if not self.shuffle:
            return epoch, offset
        return epoch, permute(offset, self.num_records, self.epoch_key(epoch))


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """Everything a group stream needs, picklable (it is sent to the worker processes once)."""

    records: Any  # a random-access source (``len`` + ``__getitem__``)
    preprocess: RecordPreprocessor
    packing: PackingConfig
    order: EpochOrder
    num_groups: int
    rows: int
    text_budget: int  # tokens per row
    patch_budget: int  # vision patches per group (shared by its rows)
    pixel_dtype: str = "float32"

    @property
    def budgets(self) -> dict[str, int]:
        return {"rows": self.rows, "text_budget": self.text_budget, "patch_budget": self.patch_budget}

    def shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """``{key: (shape, dtype)}`` of one group's microbatch."""
        shapes = packed_batch_shapes(self.packing, self.rows, self.text_budget, self.patch_budget,
                                     pixel_dtype_of(self.pixel_dtype))
        return {k: (tuple(s), np.dtype(d)) for k, (s, d) in shapes.items()}


def empty_group_state(group: int) -> dict[str, Any]:
    return {"next_position": int(group), "carry": [], "skipped": {}, "truncated": 0, "records_read": 0,
            "microbatches": 0}


def read_position(spec: StreamSpec, position: int, cast_pixels: bool = False) -> tuple[int, dict]:
    """(record index, preprocessed result) of global stream position ``position``; with
    ``cast_pixels`` the sample's pixels are already in ``spec.pixel_dtype`` (the one rounding
    ``pack`` would do, done early to halve what crosses between processes)."""
    _, index = spec.order.locate(position)
    try:
        record = spec.records[index]
    except Exception as exc:
        raise RecordError(f"group {position % spec.num_groups}: reading record {index} (stream position "
                          f"{position}) raised {type(exc).__name__}: {exc}") from exc
    out = spec.preprocess(record)
    sample = out.get("sample")
    if cast_pixels and sample is not None and sample.pixel_values is not None:
        sample.pixel_values = sample.pixel_values.astype(pixel_dtype_of(spec.pixel_dtype), copy=False)
    return index, out


class GroupStream:
    """Group ``group``'s microbatches, one per ``next_microbatch`` call (module docstring)."""

    def __init__(self, spec: StreamSpec, group: int, state: dict[str, Any] | None = None,
                 reader: Callable[[int], tuple[int, dict]] | None = None):
        """``reader``: stream position -> (record index, preprocessed result); default
        ``read_position`` here (a worker may pass one that preprocesses ahead on helpers)."""
        if not 0 <= group < spec.num_groups:
            raise ValueError(f"group {group} not in [0, num_groups={spec.num_groups})")
        self.spec, self.group = spec, int(group)
        self._read = reader or (lambda position: read_position(spec, position))
        self.events: list[tuple[int, str]] = []  # (logging level, line) not yet handed out
        self.restore(state or empty_group_state(group))

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        return {"next_position": self.next_position, "carry": [p for p, *_ in self.carry],
                "skipped": dict(self.skipped), "truncated": self.truncated, "records_read": self.records_read,
                "microbatches": self.microbatches}

    def restore(self, state: dict[str, Any]) -> None:
        G, g = self.spec.num_groups, self.group
        positions = [int(state["next_position"]), *(int(p) for p in state["carry"])]
        wrong = [p for p in positions if p < 0 or p % G != g]
        if wrong:
            raise ValueError(f"data state of group {g}: positions {wrong[:4]} are not group {g}'s "
                             f"(g + k * {G}); the state belongs to another group or num_groups")
        self.next_position = positions[0]
        self.carry = []
        for p in positions[1:]:
            index, out = read_position(self.spec, p)  # here, not read ahead: a few samples, once
            if "sample" not in out:
                raise ValueError(f"data state of group {g}: carried record {index} (stream position {p}) "
                                 f"no longer preprocesses: {out['error']}")
            self.carry.append((p, index, out["sample"]))
        self.skipped = Counter({str(k): int(v) for k, v in state["skipped"].items()})
        self.truncated = int(state["truncated"])
        self.records_read = int(state["records_read"])
        self.microbatches = int(state["microbatches"])

    # ------------------------------------------------------------------ reading

    def _next_sample(self) -> tuple[int, int, Any]:
        """(stream position, record index, sample) of the next usable record. A source whose
        records are all bad stops with a clear error instead of skipping forever: as many bad
        records in a row as the source holds (drawn from shuffled epochs) means none is usable."""
        bad_in_a_row = 0
        while True:
            position = self.next_position
            index, out = self._read(position)
            self.next_position += self.spec.num_groups
            self.records_read += 1
            if "sample" not in out:
                bad_in_a_row += 1
                if bad_in_a_row > max(self.spec.order.num_records, 8):
                    reasons = ", ".join(f"{k}: {v}" for k, v in self.skipped.most_common(3))
                    raise NoUsableRecords(f"data source: {bad_in_a_row} records in a row were bad (of "
                                          f"{self.spec.order.num_records}; e.g. record {index}: {out['error']}; "
                                          f"skipped so far by reason: {reasons}): the source has no usable record")
            if "sample" in out:
                if out.get("truncated"):
                    self.truncated += 1
                    if self.truncated <= MAX_LOGGED_BAD_RECORDS:
                        self.events.append((logging.INFO, f"record {index} (stream position {position}) "
                                                          f"{out['truncated']}"))
                return position, index, out["sample"]
            self._skip(index, position, out["error"])

    def _skip(self, index: int, position: int, reason: str) -> None:
        self.skipped[reason_key(reason)] += 1
        if sum(self.skipped.values()) <= MAX_LOGGED_BAD_RECORDS:
            self.events.append((logging.WARNING,
                                f"skipping bad record {index} (stream position {position}): {reason}"))

    def drain_events(self) -> list[tuple[int, str]]:
        events, self.events = self.events, []
        return events

    # ------------------------------------------------------------------ packing

    def next_microbatch(self) -> tuple[dict[str, np.ndarray], dict[str, float], list[int]]:
        """(arrays of one packed group, its stats, the record indices of its samples)."""
        spec = self.spec
        pool = self.carry
        tokens = sum(s.num_tokens for *_, s in pool)
        patches = sum(s.num_patches for *_, s in pool)
        # Read until the pool covers one of the two budgets: then the group is as full as the
        # binding budget allows, and the carry stays bounded by one microbatch.
        while tokens < spec.rows * spec.text_budget and patches < spec.patch_budget:
            item = self._next_sample()
            pool.append(item)
            tokens += item[2].num_tokens
            patches += item[2].num_patches
        samples = [s for *_, s in pool]
        plan = first_fit(samples, spec.rows, spec.text_budget, spec.patch_budget)
        for k, reason in plan.rejected:  # the preprocessor already rejects these; kept for safety
            self._skip(pool[k][1], pool[k][0], reason)
        self.carry = [pool[k] for k in plan.deferred]
        used = [k for row in plan.rows for k in row]
        try:
            batch = pack(spec.packing, samples, plan, spec.text_budget, spec.patch_budget, spec.pixel_dtype)
        except Exception as exc:
            records = [pool[k][1] for k in used]
            raise RecordError(f"group {self.group}: packing records {records} raised {type(exc).__name__}: "
                              f"{exc}") from exc
        self.microbatches += 1
        stats = {
            "text_padding_fraction": float(batch.pop("text_padding_fraction")),
            "patch_padding_fraction": float(batch.pop("patch_padding_fraction")),
            "samples": float(len(used)),
            "text_tokens": float(sum(samples[k].num_tokens for k in used)),
            "vision_patches": float(sum(samples[k].num_patches for k in used)),
        }
        return batch, stats, [pool[k][1] for k in used]


def produce_step(streams: list[GroupStream], grad_accum: int, out: dict[str, np.ndarray]) -> dict[str, Any]:
    """One step of ``streams``: writes microbatch ``a`` of stream ``j`` into ``out[key][a, j]``
    (``out`` holds ``[grad_accum, len(streams), ...]`` arrays) and returns, per group id, its
    per-microbatch stats, record indices, bad-record events and its state after this step."""
    meta: dict[int, dict[str, Any]] = {s.group: {"stats": [], "records": []} for s in streams}
    for a in range(grad_accum):
        for j, stream in enumerate(streams):
            batch, stats, records = stream.next_microbatch()
            for k, v in batch.items():
                out[k][a, j] = v
            meta[stream.group]["stats"].append(stats)
            meta[stream.group]["records"].extend(records)
    for stream in streams:
        meta[stream.group]["events"] = stream.drain_events()
        meta[stream.group]["state"] = stream.state()
    return meta
