"""Training checkpoints: exact round trip, keep-last-N, data-iterator state, preemption guard."""

import os
import signal

import jax
import numpy as np
import pytest
from flax import nnx

from qwen2vl_jax import get_preset
from qwen2vl_jax.model import Qwen2VL
from qwen2vl_jax.train.checkpointing import PreemptionGuard, TrainCheckpointer
from qwen2vl_jax.train.freezing import FreezeConfig, split_trainable
from qwen2vl_jax.train.optimizer import OptimizerConfig, make_optimizer


def _state(seed):
    params = nnx.to_pure_dict(nnx.state(Qwen2VL(get_preset("tiny"), rngs=nnx.Rngs(seed)), nnx.Param))
    trainable, _ = split_trainable(params, FreezeConfig(freeze_vision=True))
    tx = make_optimizer(OptimizerConfig(), trainable)
    opt_state = tx.init(trainable)
    # Make the optimizer state non-trivial: one real update.
    grads = jax.tree.map(lambda p: jax.numpy.ones_like(p) * 0.01, trainable)
    _, opt_state = tx.update(grads, opt_state, trainable)
    return params, opt_state


def test_round_trip_keep_last_and_iterator_state(tmp_path):
    params, opt_state = _state(0)
    with TrainCheckpointer(tmp_path / "ckpt", keep_last=2) as ckpt:
        for step in (1, 2, 3, 4):
            ckpt.save(step, params, opt_state, data_iter_state={"next_index": 10 * step},
                      config={"run_name": "t", "steps": 4})
        ckpt.wait()
        assert ckpt.all_steps() == [3, 4] and ckpt.latest_step() == 4
    other_params, other_opt = _state(1)  # different values, same structure
    with TrainCheckpointer(tmp_path / "ckpt", keep_last=2) as ckpt:
        step, p, o, it, cfg = ckpt.restore(other_params, other_opt)
    assert step == 4 and it == {"next_index": 40} and cfg == {"run_name": "t", "steps": 4}
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(o) == jax.tree.structure(opt_state)
    for a, b in zip(jax.tree.leaves(o), jax.tree.leaves(opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_without_checkpoint_is_a_clear_error(tmp_path):
    params, opt_state = _state(0)
    with TrainCheckpointer(tmp_path / "empty") as ckpt, pytest.raises(ValueError, match="no checkpoint"):
        ckpt.restore(params, opt_state)


def test_preemption_guard_turns_sigterm_into_a_flag():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested and guard.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before
