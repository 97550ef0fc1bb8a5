"""Faults of a run that lose nothing: a non-finite step applies no update and too many stop
the run naming the steps; a second train on the same directory refuses; a resume with a
changed recipe refuses unless accepted."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from qwen2vl_jax import get_preset
from qwen2vl_jax.layout import prepare_model_inputs
from qwen2vl_jax.model import Qwen2VL
from qwen2vl_jax.train.freezing import FreezeConfig, split_trainable
from qwen2vl_jax.train.nonfinite import NonFiniteWatch
from qwen2vl_jax.train.optimizer import OptimizerConfig, make_optimizer
from qwen2vl_jax.train.resume_check import changed_keys, check_resume
from qwen2vl_jax.train.run_lock import RunLock, RunLocked
from qwen2vl_jax.train.step import make_train_step

CFG = get_preset("tiny")


def test_a_nan_batch_applies_no_update():
    model = Qwen2VL(CFG, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(state)
    trainable, _ = split_trainable(params, FreezeConfig())
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=0), trainable)
    step = make_train_step(graphdef, tx, FreezeConfig())
    ids = np.array([[5, 6, CFG.vision_start_token_id] + [CFG.image_token_id] * 6 + [CFG.vision_end_token_id, 7, 8]])
    pix = np.full((24, 1176), np.nan, np.float32)  # a corrupt image
    b = prepare_model_inputs(CFG, ids, None, pix, [[1, 4, 6]])
    b = {k: v for k, v in b.items() if k != "rope_deltas"} | {"labels": ids.astype(np.int32)}
    before = jax.tree.map(np.array, params)
    opt_state = tx.init(trainable)
    opt_before = jax.tree.map(np.array, opt_state)
    params, opt_state, m = step(params, opt_state, jax.tree.map(lambda x: x[None], b))
    assert not bool(m["finite"])
    for a, c in zip(jax.tree.leaves(params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), c)
    for a, c in zip(jax.tree.leaves(opt_state), jax.tree.leaves(opt_before)):
        np.testing.assert_array_equal(np.asarray(a), c)


def test_too_many_nonfinite_steps_in_a_row_stop_naming_them():
    watch = NonFiniteWatch(3)
    watch.add(1, True)
    watch.add(2, False, [10, 11])
    watch.add(3, True)  # a finite step resets the count
    watch.add(4, False, [40])
    watch.add(5, False, [50])
    assert watch.settle().total == 3  # not yet three in a row (4, 5)
    watch.add(6, False, [60, 61])
    with pytest.raises(FloatingPointError, match=r"3 steps in a row.*step 4 \(records \[40\]\).*step 6"):
        watch.settle()


def test_a_second_train_on_the_same_directory_refuses(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLocked, match=f"being trained by pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire()  # released: free again


def test_a_stale_lock_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # this process has exited
    import json
    import socket
    import time

    (tmp_path / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "heartbeat": time.time()}))
    said = []
    with RunLock(tmp_path, say=said.append) as lock:
        assert lock.held and f"pid {pid}" in said[0] and "not running" in said[0]
    # Another host's lock: stale only when its heartbeat is old.
    (tmp_path / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time()}))
    with pytest.raises(RunLocked, match="on host elsewhere"):
        RunLock(tmp_path).acquire()
    (tmp_path / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 7200}))
    with RunLock(tmp_path, say=said.append):
        assert "no heartbeat" in said[-1]


def test_resume_refuses_a_changed_recipe_unless_accepted():
    saved = {"steps": 10, "runtime": {"mesh": None, "dtype": "float32"}, "optimizer": {"learning_rate": 1e-3},
             "data": {"source": {"type": "jsonl", "path": "a.jsonl"}, "num_workers": 1}, "log_every": 5}
    free = {**saved, "steps": 20, "runtime": {"mesh": "fsdp=2", "dtype": "float32"}, "log_every": 1,
            "data": {**saved["data"], "num_workers": 4}}
    assert changed_keys(saved, free) == []
    changed = {**saved, "optimizer": {"learning_rate": 1e-4}, "data": {**saved["data"],
               "source": {"type": "jsonl", "path": "b.jsonl"}}}
    diff = changed_keys(saved, changed)
    assert diff == ["data.source: {'type': 'jsonl', 'path': 'a.jsonl'} -> {'type': 'jsonl', 'path': 'b.jsonl'}",
                    "optimizer.learning_rate: 0.001 -> 0.0001"]
    with pytest.raises(ValueError, match="accept_changed_recipe=true"):
        check_resume(saved, changed, accept=False)
    said = []
    check_resume(saved, changed, accept=True, say=said.append)
    assert "optimizer.learning_rate" in said[0]
