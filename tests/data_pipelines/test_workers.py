"""Data workers: failures surface as errors that name the worker and the record (never a hang),
and the pipeline closes its processes; bf16 pixels are exact for a bf16 model."""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import numpy as np
import pytest
from flax import nnx

from data_pipelines.group_stream import RecordError
from data_pipelines.pipeline import DataConfig, PackedBatches
from data_pipelines.sources import register_source_type
from data_pipelines.workers import DataWorkerError
from faulty_sources import FaultySource
from qwen2vl_jax import RuntimeConfig
from qwen2vl_jax.layout.packing import packed_batch_shapes
from qwen2vl_jax.model import abstract_model, forward

register_source_type("faulty_for_tests", FaultySource, replace=True)


def _pipe(demo_parts, fault, num_workers, **kw):
    processor, cfg = demo_parts
    data = DataConfig(source={"type": "faulty_for_tests", "fault": fault, "at": 5}, text_budget=128,
                      patches_per_row=192, num_workers=num_workers)
    return PackedBatches(cfg, data, processor, rows=2, num_groups=2, seed=0, **kw)


def _run_until_error(it, steps=12):
    for _ in range(steps):  # record 5 is read within the first epoch (40 records)
        next(it)


def _workers_of(it):
    return list(it._source._procs) if it._source is not None else []


def test_a_record_that_raises_in_a_worker_names_the_worker_and_the_record(demo_parts):
    it = _pipe(demo_parts, "raise", num_workers=2)
    next(it)
    procs = _workers_of(it)
    assert len(procs) == 2 and all(p.is_alive() for p in procs)
    with pytest.raises(DataWorkerError, match=r"data worker \d \(pid \d+, groups \[\d\]\) failed: RecordError: "
                                              r"group \d: reading record 5 \(stream position \d+\) raised OSError: "
                                              "disk gone"):
        _run_until_error(it)
    assert it._source is None and not any(p.is_alive() for p in procs)  # closed on the error
    it.close()


def test_a_record_that_raises_in_process_is_a_record_error(demo_parts):
    with _pipe(demo_parts, "raise", num_workers=0) as it, pytest.raises(RecordError, match="reading record 5"):
        _run_until_error(it)


def test_a_worker_that_dies_is_an_error_not_a_hang(demo_parts):
    it = _pipe(demo_parts, "crash", num_workers=1)
    start = time.monotonic()
    with pytest.raises(DataWorkerError, match=r"data worker 0 \(pid \d+, groups \[0, 1\]\) exited with code 7"):
        _run_until_error(it)
    assert time.monotonic() - start < 30
    it.close()


@pytest.mark.parametrize("fault, message", [
    ("raise", r"preprocessing helper 0 of data worker \d, stream position \d+: RecordError: group \d: reading "
              r"record 5 \(stream position \d+\) raised OSError: disk gone"),
    ("crash", r"preprocessing helper 0 of data worker \d died while preprocessing stream positions \[\d+"),
])
def test_a_failing_preprocessing_helper_is_an_error_naming_it(demo_parts, fault, message):
    it = _pipe(demo_parts, fault, num_workers=4)  # 2 groups: 2 packing workers + a helper each
    with pytest.raises(DataWorkerError, match=r"data worker \d \(pid \d+, groups \[\d\]\) failed: RecordError: "
                                              + message):
        _run_until_error(it)
    it.close()


def test_a_silent_worker_times_out(demo_parts):
    it = _pipe(demo_parts, "stall", num_workers=1, timeout_s=2)
    start = time.monotonic()
    with pytest.raises(DataWorkerError, match=r"sent no step \d+ in 2 s"):
        _run_until_error(it)
    assert time.monotonic() - start < 20
    it.close()


def test_close_stops_the_workers_and_the_state_stays_readable(demo_parts):
    it = _pipe(demo_parts, "none", num_workers=2)
    next(it)
    procs = _workers_of(it)
    state = it.get_state()
    it.close()
    assert not any(p.is_alive() for p in procs)
    assert it.get_state() == state
    with pytest.raises(RuntimeError, match="closed"):
        next(it)


# ---------------------------------------------------------------------- bf16 pixels


def test_bf16_pixels_give_the_same_logits_as_fp32_pixels_in_a_bf16_model(demo_parts):
    processor, cfg = demo_parts
    data = DataConfig(source={"type": "synthetic_visual_qa", "num_records": 40, "seed": 0}, text_budget=128,
                      patches_per_row=192)
    items = {}
    for dtype, workers in (("float32", 0), ("bfloat16", 0), ("bfloat16 on a helper", 2)):
        data = dataclasses.replace(data, num_workers=workers)
        with PackedBatches(cfg, data, processor, rows=2, num_groups=1, seed=0, pixel_dtype=dtype.split()[0]) as it:
            items[dtype] = next(it)
    f32, b16 = items["float32"]["batch"], items["bfloat16"]["batch"]
    for k in b16:  # a helper casts the sample's pixels itself: the same rounding, the same bits
        np.testing.assert_array_equal(b16[k], items["bfloat16 on a helper"]["batch"][k])
    assert f32["pixel_values"].dtype == np.float32 and b16["pixel_values"].dtype.name == "bfloat16"
    assert b16["pixel_values"].nbytes * 2 == f32["pixel_values"].nbytes
    for k in f32:
        if k != "pixel_values":
            np.testing.assert_array_equal(f32[k], b16[k])
    np.testing.assert_array_equal(f32["pixel_values"].astype(b16["pixel_values"].dtype), b16["pixel_values"])
    assert not np.array_equal(f32["pixel_values"], b16["pixel_values"].astype(np.float32))  # really rounded
    shapes = packed_batch_shapes(cfg, 2, 128, 384, "bfloat16")
    assert shapes["pixel_values"] == (b16["pixel_values"].shape[2:], b16["pixel_values"].dtype)
    assert packed_batch_shapes(cfg, 2, 128, 384)["pixel_values"][1] == np.float32

    model = abstract_model(cfg, RuntimeConfig(dtype="bfloat16"))  # random fp32 weights, no init compile
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: (0.2 * rng.standard_normal(x.shape)).astype(x.dtype),
                          nnx.state(model, nnx.Param))
    graphdef = nnx.graphdef(model)
    logits = jax.jit(functools.partial(forward, graphdef))
    inputs = lambda b: {k: v[0, 0] for k, v in b.items() if k != "labels"}  # noqa: E731
    want, got = np.asarray(logits(params, inputs(f32))), np.asarray(logits(params, inputs(b16)))
    assert np.isfinite(want).all() and want.std() > 0
    np.testing.assert_array_equal(want, got)  # bit-identical


# ---------------------------------------------------------------------- zero-copy steps


def _synthetic(demo_parts, num_workers, **kw):
    processor, cfg = demo_parts
    data = DataConfig(source={"type": "synthetic_visual_qa", "num_records": 40, "seed": 0}, text_budget=128,
                      patches_per_row=192, num_workers=num_workers)
    return PackedBatches(cfg, data, processor, rows=2, grad_accum=2, num_groups=2, seed=1, **kw)


def test_steps_are_shared_memory_that_lives_as_long_as_the_callers_arrays(demo_parts):
    with _synthetic(demo_parts, 0) as ref:
        want = [next(ref)["batch"] for _ in range(8)]
    it = _synthetic(demo_parts, 2, prefetch=2)
    # The loop's pattern (keep only the current step): the slots stay prefetch + 2.
    for n in range(3):
        item = next(it)
        for k in want[n]:
            np.testing.assert_array_equal(item["batch"][k], want[n][k])
    assert it._source.num_slots == 4
    kept = next(it)["batch"]["input_ids"][1, 0]  # a derived view keeps the whole step's slot
    del item
    # A caller that keeps steps: their slots are never written again, new ones are made.
    held = [next(it) for _ in range(4)]
    assert it._source.num_slots == 4 + 1 + 4 - 2  # + kept + held, less the two that steps 0 and 2 freed
    it.close()  # the arrays outlive the pipeline
    np.testing.assert_array_equal(kept, want[3]["input_ids"][1, 0])
    for n, item in enumerate(held, start=4):
        for k in want[n]:
            np.testing.assert_array_equal(item["batch"][k], want[n][k])
    assert held[0]["batch"]["pixel_values"].base is not None  # a view, not a copy


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_source_whose_records_are_all_bad_stops_with_a_clear_error(demo_parts, num_workers):
    from data_pipelines.group_stream import NoUsableRecords
    from faulty_sources import AllBadSource

    register_source_type("all_bad_for_tests", AllBadSource, replace=True)
    processor, cfg = demo_parts
    data = DataConfig(source={"type": "all_bad_for_tests", "num_records": 12}, text_budget=128,
                      patches_per_row=192, num_workers=num_workers)
    with PackedBatches(cfg, data, processor, rows=2, num_groups=2, seed=0) as it:
        with pytest.raises(NoUsableRecords, match="records in a row were bad .* no usable record"):
            next(it)
