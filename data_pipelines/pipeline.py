"""The training input pipeline: source -> shuffle -> shard -> preprocess (worker processes) ->
first-fit packing -> microbatches of fixed shape. Host numpy out; the loop does ``device_put``.

    records = open_source(spec)                                    # random access
    ds = grain.MapDataset.source(records).shuffle(seed)            # global shuffle, per epoch
    ds = ds[process_index::process_count].repeat()                 # this process's shard
    ds = ds.map_with_index(preprocess)                             # -> (index, sample | error)
    it = ds.to_iter_dataset().mp_prefetch(num_workers)             # preprocessing off the main process

``PackedBatches`` then draws samples until a group's text or patch budget is covered, first-fit
packs them (``qwen2vl_jax.layout.packing``), carries the samples that did not fit to the next group, and
stacks ``groups`` groups (one per local device) x ``grad_accum`` microbatches into one step's
batch ``[A, G, rows, ...]``.

State: the grain iterator's state + the indices of the carried samples + the skip counters. The
carried samples are re-made from their indices on restore (preprocessing is a pure function of
the record), so a restored iterator continues the exact stream and the state stays small JSON.

Bad records are never fatal: each is skipped, counted by reason (``skipped``) and the first few
are logged with their index and full reason.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from typing import Any

import numpy as np

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
    shuffle: bool = True
    min_pixels: int | None = None  # image processor overrides (None: the checkpoint's)
    max_pixels: int | None = None
    root: str | None = None  # folder relative image paths are resolved against


class _IndexedPreprocess:
    """``(index, record) -> (index, result)``; picklable for grain's worker processes."""

    def __init__(self, preprocess: RecordPreprocessor):
        self.preprocess = preprocess

    def __call__(self, index: int, record: Any) -> tuple[int, dict]:
        return index, self.preprocess(record)


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
                                        max_patches=self.patch_budget, root=data.root)
        ds = grain.MapDataset.source(records)
        if data.shuffle:
            ds = ds.shuffle(seed)
        ds = ds[process_index::process_count].repeat()
        self._indexed = ds.map_with_index(_IndexedPreprocess(preprocess))
        it_ds = self._indexed.to_iter_dataset()
        if data.num_workers > 0:
            _absl_flags_parsed()
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
        self._it = iter(it_ds)
        self._carry: list[tuple[int, Any]] = []  # (index, Sample) read but not yet packed
        self.skipped: Counter[str] = Counter()
        self.records_read = 0
        self.batches = 0

    # ------------------------------------------------------------------ state

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._it.get_state(), "carry": [i for i, _ in self._carry],
                "skipped": dict(self.skipped), "records_read": self.records_read, "batches": self.batches}

    def set_state(self, state: dict[str, Any]) -> None:
        self._it.set_state(state["grain"])
        self._carry = []
        for i in state["carry"]:
            _, out = self._indexed[i]
            self._carry.append((i, out["sample"]))
        self.skipped = Counter(state["skipped"])
        self.records_read = int(state["records_read"])
        self.batches = int(state["batches"])

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> PackedBatches:
        return self

    def _next_sample(self) -> tuple[int, Any]:
        while True:
            index, out = next(self._it)
            self.records_read += 1
            if "sample" in out:
                return index, out["sample"]
            self._skip(index, out["error"])

    def _skip(self, index: int, reason: str) -> None:
        self.skipped[reason_key(reason)] += 1
        if sum(self.skipped.values()) <= MAX_LOGGED_BAD_RECORDS:
            log.warning("skipping bad record %d: %s", index, reason)

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
            self._skip(pool[k][0], reason)
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
        self.batches += 1
        return {"batch": batch, "stats": stats}

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
