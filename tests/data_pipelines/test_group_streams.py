"""Group streams: a step's content depends on (records, seed, group, num_groups, budgets) only:
not on the process count, not on the worker count; exact resume from (gathered) states."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from data_pipelines.pipeline import DataConfig, PackedBatches, StateMismatch, merge_states, process_groups

G = 4  # packing groups per step, globally
# 40 records, 4 groups x 2 microbatches x ~8 samples a step: every step crosses into a new epoch.
SOURCE = {"type": "synthetic_visual_qa", "num_records": 40, "seed": 0}


def _data(**kw):
    return DataConfig(**{"source": SOURCE, "text_budget": 128, "patches_per_row": 192, **kw})


def _pipe(demo_parts, groups=None, num_groups=G, data=None, **kw):
    processor, cfg = demo_parts
    return PackedBatches(cfg, data or _data(), processor, rows=2, grad_accum=2, num_groups=num_groups,
                         groups=groups, seed=3, **kw)


def _steps(it, n):
    return [next(it) for _ in range(n)]


def _concat(per_process_steps):
    """The global steps: the processes' shares concatenated along the group axis, in group order."""
    steps = []
    for parts in zip(*per_process_steps):
        batch = {k: np.concatenate([p["batch"][k] for p in parts], axis=1) for k in parts[0]["batch"]}
        steps.append({"batch": batch, "record_indices": [r for p in parts for r in p["record_indices"]]})
    return steps


def _assert_same(want, got):
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert w["batch"].keys() == g["batch"].keys()
        for k in w["batch"]:
            assert w["batch"][k].dtype == g["batch"][k].dtype
            np.testing.assert_array_equal(w["batch"][k], g["batch"][k], err_msg=k)
        assert w["record_indices"] == g["record_indices"]


@pytest.fixture(scope="module")
def reference(demo_parts):
    """4 steps of one process owning all groups, in process (and its state after 2 steps)."""
    with _pipe(demo_parts) as it:
        first = _steps(it, 2)
        state = json.loads(json.dumps(it.get_state()))
        rest = _steps(it, 2)
    return first + rest, state


def test_global_batch_is_the_same_for_one_or_two_processes(demo_parts, reference):
    want, _ = reference
    halves = [_pipe(demo_parts, groups=process_groups(G, p, 2)) for p in range(2)]
    got = _concat([_steps(h, 4) for h in halves])
    _assert_same(want, got)
    # The stream crossed epochs: 4 steps read more than 3 epochs of the 40 records.
    assert sum(h.records_read for h in halves) > 3 * 40
    for h in halves:
        h.close()
    assert want[0]["batch"]["input_ids"].shape == (2, G, 2, 128)


@pytest.mark.parametrize("num_workers", [1, 2, 6])  # 6: 4 packing workers + 2 preprocessing helpers
def test_batches_do_not_depend_on_the_worker_count(demo_parts, reference, num_workers):
    want, _ = reference
    with _pipe(demo_parts, data=_data(num_workers=num_workers)) as it:
        got = _steps(it, 4)
    _assert_same(want, got)


def test_states_of_two_processes_resume_in_one_exactly(demo_parts, reference):
    want, _ = reference
    halves = [_pipe(demo_parts, groups=process_groups(G, p, 2)) for p in range(2)]
    for h in halves:
        _steps(h, 2)  # two steps: each group is in the middle of an epoch, with carried samples
    states = [json.loads(json.dumps(h.get_state())) for h in halves]  # as if all-gathered
    assert all(states[p]["groups"].keys() == {str(g) for g in process_groups(G, p, 2)} for p in range(2))
    merged = merge_states(states)
    assert any(s["carry"] for s in merged["groups"].values()) and merged["steps"] == 2
    with _pipe(demo_parts) as one:
        one.set_state(merged)
        got = _steps(one, 2)
    _assert_same(want[2:], got)
    halves[0].close()
    halves[1].close()


def test_one_state_resumes_in_two_processes_with_workers(demo_parts, reference):
    # Each process picks its own groups out of the whole state.
    want, state = reference
    parts = []
    for p in range(2):
        with _pipe(demo_parts, groups=process_groups(G, p, 2), data=_data(num_workers=1)) as it:
            it.set_state(state)
            assert it.get_state()["groups"] == {k: v for k, v in state["groups"].items()
                                                if int(k) in process_groups(G, p, 2)}
            parts.append(_steps(it, 2))
    _assert_same(want[2:], _concat(parts))


def test_a_state_that_cannot_carry_over_is_a_clear_error(demo_parts, reference):
    _, state = reference
    with pytest.raises(StateMismatch, match=r"cannot carry over.*num_groups=4 .* this run has 8"):
        _pipe(demo_parts, num_groups=8).set_state(state)
    with pytest.raises(ValueError, match=r"cannot carry over: its packing budgets .*'text_budget': 128.* differ"):
        _pipe(demo_parts, data=_data(text_budget=96)).set_state(state)
    with pytest.raises(StateMismatch, match="earlier input pipeline"):
        _pipe(demo_parts).set_state({"grain": {}, "carry": [], "skipped": {}})
    half = {**state, "groups": {k: v for k, v in state["groups"].items() if k in ("0", "1")}}
    with pytest.raises(StateMismatch, match=r"no state for groups \[2, 3\]"):
        _pipe(demo_parts).set_state(half)
    with pytest.raises(StateMismatch, match="overlap"):
        merge_states([state, state])


def test_state_is_as_of_the_last_step_taken_not_of_prefetched_work(demo_parts, reference):
    want, state = reference
    with _pipe(demo_parts, data=_data(num_workers=1), prefetch=2) as it:
        assert it.get_state()["groups"]["0"] == {"next_position": 0, "carry": [], "skipped": {}, "truncated": 0,
                                                 "records_read": 0, "microbatches": 0}
        _steps(it, 2)
        # The worker has been working ahead meanwhile; the state is still that of step 2.
        assert it.get_state() == state


def test_record_indices_name_the_records_of_each_group(demo_parts, tmp_path):
    processor, cfg = demo_parts
    path = tmp_path / "numbered.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"record {i} ?"},
                                                      {"role": "assistant", "content": "ok"}]}) + "\n"
                            for i in range(30)))
    data = _data(source={"type": "jsonl", "path": str(path)})
    with PackedBatches(cfg, data, processor, rows=2, grad_accum=2, num_groups=3, groups=[1, 2], seed=5) as it:
        for _ in range(3):
            item = next(it)
            ids, seg = item["batch"]["input_ids"], item["batch"]["segment_ids"]
            for j in range(2):
                seen = []
                for a in range(2):
                    for r in range(2):
                        for s in range(1, seg[a, j, r].max() + 1):
                            text = processor.decode(ids[a, j, r][seg[a, j, r] == s])
                            seen.append(int(re.search(r"record (\d+)", text).group(1)))
                assert seen == item["record_indices"][j]
            assert sum(map(len, item["record_indices"])) == item["stats"]["samples"]
