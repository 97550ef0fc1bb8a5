"""The training input pipeline: source -> shuffle -> shard -> preprocess (worker processes) ->
first-fit packing -> microbatches of fixed shape. Host numpy out; the loop does ``device_put``.

    records = open_source(spec)                                    # random access
    order = EpochOrder(len(records), seed, shuffle, process_index, process_count)
    ds = grain.MapDataset.range(order.length).map(preprocess)     # position -> (position, record, result)
    it = ds.to_iter_dataset().mp_prefetch(num_workers)             # preprocessing off the main process

The record order is ours, not a composition of grain transformations: the global stream is
epoch 0's permutation of all records, then epoch 1's, ...; epoch ``e`` is a keyed pseudo-random
permutation (``mixture.permute``) whose key hashes ``(seed, e)``, so every epoch has its own
order, each a pure function of ``(seed, epoch)`` (grain's ``shuffle`` keys epoch ``e`` with
``seed + e``: run ``seed + 1`` would replay run ``seed`` one epoch late). Process ``p`` of ``P``
reads global positions ``p, p + P, p + 2P, ...``: the processes split every epoch between them
without overlap. A stream position maps to its record in O(1), so grain's iterator state (the
next position) restores the exact stream, also in the middle of an epoch.

``PackedBatches`` then draws samples until a group's text or patch budget is covered, first-fit
packs them (``qwen2vl_jax.layout.packing``), carries the samples that did not fit to the next group, and
stacks ``groups`` groups (one per local device) x ``grad_accum`` microbatches into one step's
batch ``[A, G, rows, ...]``.

State: the grain iterator's state + the stream positions of the carried samples + the skip and
truncation counters. The carried samples are re-made from their positions on restore
(preprocessing is a pure function of the record), so a restored iterator continues the exact
stream and the state stays small JSON.

Bad records are never fatal: each is skipped, counted by reason (``skipped``) and the first few
are logged with their record index and full reason. Samples over the text budget are skipped or,
with ``data.overlong: truncate``, cut to it (``preprocess``) and counted in ``truncated``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections import Counter
from typing import Any

import numpy as np

from data_pipelines.mixture import _mix64, permute
from data_pipelines.preprocess import RecordPreprocessor, reason_key
from data_pipelines.sources import open_source
from qwen2vl_jax.layout.packing import first_fit, pack

log = logging.getLogger(__name__)
MAX_LOGGED_BAD_RECORDS = 20


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The ``data:`` section of a training recipe.

    ``rows`` per microbatch and ``grad_accum`` come from the run (per-device batch size x local
    devices); the budgets here are per row: a microbatch holds ``rows x text_budget`` tokens and
    ``rows x patches_per_row`` vision patches, whatever the images' sizes.
    """

    source: dict = dataclasses.field(default_factory=lambda: {"type": "synthetic_visual_qa"})
    labels: str = "assistant"  # "assistant" (SFT) | "all_text" (pre-training)
    text_budget: int = 1024  # tokens per row
    patches_per_row: int = 4096  # vision patches per row (shared by the microbatch's rows)
    num_workers: int = 0  # preprocessing processes (0: in the main process)
    shuffle: bool = True  # a new permutation of the records every epoch
    overlong: str = "skip"  # a sample over text_budget: "skip" | "truncate" (cut its text's tail)
    min_pixels: int | None = None  # image processor overrides (None: the checkpoint's)
    max_pixels: int | None = None
    root: str | None = None  # folder relative image paths are resolved against


_EPOCH_SALT = 0x2545F4914F6CDD1D


@dataclasses.dataclass(frozen=True)
class EpochOrder:
    """Which record this process reads at each stream position (see the module docstring)."""

    num_records: int
    seed: int = 0
    shuffle: bool = True
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        if self.num_records < 1:
            raise ValueError(f"need at least one record, got {self.num_records}")
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index {self.process_index} not in [0, process_count={self.process_count})")

    @property
    def length(self) -> int:
        """The stream is endless (epoch after epoch); grain needs a length."""
        return sys.maxsize

    def epoch_key(self, epoch: int) -> int:
        return _mix64(_mix64(int(self.seed)) ^ _mix64(int(epoch) ^ _EPOCH_SALT))

    def locate(self, position: int) -> tuple[int, int]:
        """Stream position of this process -> (epoch, record index)."""
        epoch, offset = divmod(self.process_index + int(position) * self.process_count, self.num_records)
        if not self.shuffle:
            return epoch, offset
        return epoch, permute(offset, self.num_records, self.epoch_key(epoch))


class _StreamPreprocess:
    """``position -> (position, record index, result)``; picklable for grain's worker processes."""

    def __init__(self, records: Any, order: EpochOrder, preprocess: RecordPreprocessor):
        self.records, self.order, self.preprocess = records, order, preprocess

    def __call__(self, position: int) -> tuple[int, int, dict]:
        _, index = self.order.locate(position)
        return int(position), index, self.preprocess(self.records[index])


def _absl_flags_parsed() -> None:
    # grain's worker processes read absl flags; a plain script (no absl.app.run) must mark them.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class PackedBatches:
    """An iterator of fixed-shape training batches with a JSON state (see module docstring).

    Args:
        cfg: the model config (token ids, merge size, patch dim).
        data: the ``DataConfig``.
        processor: a ``Qwen2VLProcessor``.
        rows: rows per packed group; groups: groups per microbatch on this process (one per
            local device: each has its own vision stream); grad_accum: microbatches per step.
        seed: shuffle seed; process_index / process_count: this process's shard.
        base_dir: where relative source paths in ``data.source`` are resolved.
    """

    def __init__(self, cfg: Any, data: DataConfig, processor: Any, *, rows: int, grad_accum: int = 1,
                 groups: int = 1, seed: int = 0, process_index: int = 0, process_count: int = 1, base_dir: str | None = None):
        import grain

        if min(rows, grad_accum, groups) < 1:
            raise ValueError(f"rows, grad_accum and groups must be >= 1, got {rows}, {grad_accum}, {groups}")
        self.cfg, self.data, self.rows, self.grad_accum, self.groups = cfg, data, rows, grad_accum, groups
        self.text_budget = data.text_budget
        self.patch_budget = rows * data.patches_per_row
        records = open_source(dict(data.source), base_dir=base_dir)
        if len(records) == 0:
            raise ValueError(f"data source {data.source} has no records")
        preprocess = RecordPreprocessor(processor, labels=data.labels, max_tokens=self.text_budget,
                                        max_patches=self.patch_budget, root=data.root, overlong=data.overlong)
        self.order = EpochOrder(len(records), seed, data.shuffle, process_index, process_count)
        self._indexed = grain.MapDataset.range(self.order.length).map(_StreamPreprocess(records, self.order, preprocess))
        it_ds = self._indexed.to_iter_dataset()
        if data.num_workers > 0:
            _absl_flags_parsed()
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
        self._it = iter(it_ds)
        self._carry: list[tuple[int, Any]] = []  # (stream position, Sample) read but not yet packed
        self.skipped: Counter[str] = Counter()
        self.truncated = 0  # samples cut to the text budget (data.overlong: truncate)
        self.records_read = 0
        self.batches = 0

    # ------------------------------------------------------------------ state

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._it.get_state(), "carry": [i for i, _ in self._carry],
                "skipped": dict(self.skipped), "truncated": self.truncated, "records_read": self.records_read,
                "batches": self.batches}

    def set_state(self, state: dict[str, Any]) -> None:
        self._it.set_state(state["grain"])
        self._carry = []
        for i in state["carry"]:
            _, _, out = self._indexed[i]
            self._carry.append((i, out["sample"]))
        self.skipped = Counter(state["skipped"])
        self.truncated = int(state.get("truncated", 0))
        self.records_read = int(state["records_read"])
        self.batches = int(state["batches"])

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> PackedBatches:
        return self

    def _next_sample(self) -> tuple[int, Any]:
        while True:
            position, index, out = next(self._it)
            self.records_read += 1
            if "sample" in out:
                if out.get("truncated"):
                    self.truncated += 1
                    if self.truncated <= MAX_LOGGED_BAD_RECORDS:
                        log.info("record %d (stream position %d) %s", index, position, out["truncated"])
                return position, out["sample"]
            self._skip(index, out["error"], position)

    def _skip(self, index: int, reason: str, position: int | None = None) -> None:
        self.skipped[reason_key(reason)] += 1
        if sum(self.skipped.values()) <= MAX_LOGGED_BAD_RECORDS:
            where = "" if position is None else f" (stream position {position})"
            log.warning("skipping bad record %d%s: %s", index, where, reason)

    def _microbatch(self) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        pool = self._carry
        tokens = sum(s.num_tokens for _, s in pool)
        patches = sum(s.num_patches for _, s in pool)
        # Read until the pool covers one of the two budgets: then the batch is as full as the
        # binding budget allows, and the carry stays bounded by one batch.
        while tokens < self.rows * self.text_budget and patches < self.patch_budget:
            index, sample = self._next_sample()
            pool.append((index, sample))
            tokens += sample.num_tokens
            patches += sample.num_patches
        samples = [s for _, s in pool]
        plan = first_fit(samples, self.rows, self.text_budget, self.patch_budget)
        for k, reason in plan.rejected:  # the preprocessor already rejects these; kept for safety
            self._skip(self.order.locate(pool[k][0])[1], reason, pool[k][0])
        self._carry = [pool[k] for k in plan.deferred]
        batch = pack(self.cfg, samples, plan, self.text_budget, self.patch_budget)
        used = [samples[k] for row in plan.rows for k in row]
        stats = {
            "text_padding_fraction": float(batch.pop("text_padding_fraction")),
            "patch_padding_fraction": float(batch.pop("patch_padding_fraction")),
            "samples": float(len(used)),
            "text_tokens": float(sum(s.num_tokens for s in used)),
            "vision_patches": float(sum(s.num_patches for s in used)),
        }
        return batch, stats

    def __next__(self) -> dict[str, Any]:
        """One step: ``{"batch": {key: [A, G, ...]}, "stats": {...}}`` (host numpy): A = grad_accum
        microbatches of G = groups packed groups (one per local device) of ``rows`` rows."""
        parts = [self._microbatch() for _ in range(self.grad_accum * self.groups)]
        batch = {k: np.stack([b[k] for b, _ in parts]).reshape(self.grad_accum, self.groups, *parts[0][0][k].shape)
                 for k in parts[0][0]}
        stats = {k: float(np.mean([s[k] for _, s in parts])) for k in parts[0][1]}
        for k in ("samples", "text_tokens", "vision_patches"):
            stats[k] = float(sum(s[k] for _, s in parts))
        stats["skipped_records"] = float(sum(self.skipped.values()))
        stats["truncated_records"] = float(self.truncated)
        self.batches += 1
        return {"batch": batch, "stats": stats}

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
