"""The pure train step: freezing, accumulation, learning, precision."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from qwen2vl_jax import RuntimeConfig, get_preset
from qwen2vl_jax.layout import prepare_model_inputs
from qwen2vl_jax.model import Qwen2VL
from qwen2vl_jax.train.freezing import FreezeConfig, component_of, split_trainable
from qwen2vl_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer
from qwen2vl_jax.train.step import make_train_step

CFG = get_preset("tiny")
OPT = OptimizerConfig(learning_rate=3e-3, warmup_steps=2, total_steps=50, clip_grad_norm=1.0)


def _rows(seed=0):
    rng = np.random.default_rng(seed)
    c = CFG
    rows, labels = [], []
    for _ in range(2):
        text = rng.integers(5, 100, size=6).tolist()
        ids = text[:2] + [c.vision_start_token_id] + [c.image_token_id] * 6 + [c.vision_end_token_id] + text[2:]
        lab = [-100] * 10 + text[2:]  # loss on the text after the image only
        rows.append(ids)
        labels.append(lab)
    pix = rng.standard_normal((48, 1176)).astype(np.float32)
    return np.array(rows), np.array(labels), pix


def _batch(ids, labels, pix, grids):
    b = prepare_model_inputs(CFG, ids, None, pix, grids)
    b = {k: v for k, v in b.items() if k != "rope_deltas"}
    b["labels"] = labels.astype(np.int32)
    return b


def _setup(freeze, runtime=None):
    model = Qwen2VL(CFG, runtime, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(params)
    trainable, _ = split_trainable(params, freeze)
    tx = make_optimizer(OPT, trainable)
    step = make_train_step(graphdef, tx, freeze, schedule=learning_rate_schedule(OPT))
    return params, tx.init(trainable), step


def _copy(tree):
    return jax.tree.map(lambda x: np.array(x), tree)


def test_stage1_freezes_the_llm_bitwise_and_gives_it_no_optimizer_state():
    freeze = FreezeConfig(freeze_llm=True)
    params, opt_state, step = _setup(freeze)
    before = _copy(params)
    ids, labels, pix = _rows()
    batch = jax.tree.map(lambda x: x[None], _batch(ids, labels, pix, [[1, 4, 6], [1, 4, 6]]))
    for _ in range(2):
        params, opt_state, metrics = step(params, opt_state, batch)
    flat_before = dict(jax.tree_util.tree_leaves_with_path(before))
    changed = {"vision": 0, "merger": 0, "llm": 0}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        same = np.array_equal(np.asarray(leaf), flat_before[path])
        if component_of(path) == "llm":
            assert same, path  # bitwise unchanged
        changed[component_of(path)] += not same
    assert changed["vision"] > 0 and changed["merger"] > 0
    # Adam moments exist only for the trainable leaves.
    n_trainable = sum(component_of(p) != "llm" for p, _ in jax.tree_util.tree_leaves_with_path(params))
    adam = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)]
    assert len(adam) == 1
    assert len([x for x in jax.tree.leaves(adam[0].mu) if x is not None and hasattr(x, "shape")]) == n_trainable
    assert float(metrics["learning_rate"]) == pytest.approx(float(learning_rate_schedule(OPT)(1)))


def test_gradient_accumulation_equals_the_larger_batch():
    freeze = FreezeConfig(freeze_vision=True)  # stage 3
    ids, labels, pix = _rows(1)
    grids = [[1, 4, 6]]
    whole = jax.tree.map(lambda x: x[None], _batch(ids, labels, pix, grids * 2))
    micro = [_batch(ids[i:i + 1], labels[i:i + 1], pix[24 * i:24 * (i + 1)], grids) for i in range(2)]
    micro = jax.tree.map(lambda *xs: np.stack(xs), *micro)
    p1, s1, step = _setup(freeze)
    p1, _, m1 = step(p1, s1, whole)
    p2, s2, step = _setup(freeze)
    p2, _, m2 = step(p2, s2, micro)
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), abs=1e-6)
    assert int(m1["tokens"]) == int(m2["tokens"]) == 8
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_loss_decreases_and_bf16_compute_keeps_fp32_master_weights():
    params, opt_state, step = _setup(FreezeConfig(), RuntimeConfig(dtype="bfloat16", param_dtype="float32"))
    ids, labels, pix = _rows(2)
    batch = jax.tree.map(lambda x: x[None], _batch(ids, labels, pix, [[1, 4, 6], [1, 4, 6]]))
    losses = []
    for _ in range(30):
        params, opt_state, metrics = step(params, opt_state, batch)
        losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]
    assert {str(x.dtype) for x in jax.tree.leaves(params)} == {"float32"}


def test_everything_frozen_is_an_error():
    params = nnx.to_pure_dict(nnx.state(Qwen2VL(CFG, rngs=nnx.Rngs(0)), nnx.Param))
    with pytest.raises(ValueError, match="nothing to train"):
        make_optimizer(OPT, split_trainable(params, FreezeConfig(True, True, True))[0])


def test_train_step_runs_on_a_packed_batch():
    from qwen2vl_jax.layout.packing import Sample, first_fit, pack

    ids, labels, pix = _rows(5)
    samples = [Sample(ids[i], labels[i], pix[24 * i:24 * (i + 1)], np.array([[1, 4, 6]])) for i in range(2)]
    batch = pack(CFG, samples, first_fit(samples, 1, 32, 256), 32, 256)
    params, opt_state, step = _setup(FreezeConfig())
    losses = []
    for _ in range(3):
        params, opt_state, metrics = step(params, opt_state, jax.tree.map(lambda x: np.asarray(x)[None], batch))
        losses.append(float(metrics["loss"]))
    assert int(metrics["tokens"]) == int((np.asarray(batch["labels"])[:, 1:] != -100).sum())
    assert losses[-1] < losses[0]
