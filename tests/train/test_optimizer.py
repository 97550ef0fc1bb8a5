"""AdamW's weight-decay mask: chosen by parameter path (norm scales, biases, embeddings), not by rank."""

import dataclasses
import functools

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from qwen2vl_jax import get_preset
from qwen2vl_jax.model import abstract_model
from qwen2vl_jax.train.freezing import FreezeConfig, split_trainable
from qwen2vl_jax.train.optimizer import OptimizerConfig, learning_rate_schedule, make_optimizer

BASE = get_preset("tiny")
# Untied, so that lm_head exists (a weight matrix: decayed) next to embed_tokens (not by default).
CFG = BASE.replace(text=dataclasses.replace(BASE.text, tie_word_embeddings=False))
LR, WD = 0.1, 0.5

# Every parameter of the tiny model whose leaf is not a weight matrix, by path.
NORMS = {"decoder.layers.input_norm.scale", "decoder.layers.post_attention_norm.scale", "decoder.norm.scale",
         "visual.blocks.norm1.scale", "visual.blocks.norm2.scale", "visual.merger.ln_q.scale"}
NORM_BIASES = {"visual.blocks.norm1.bias", "visual.blocks.norm2.bias", "visual.merger.ln_q.bias"}
BIASES = {"decoder.layers.q_bias", "decoder.layers.k_bias", "decoder.layers.v_bias", "visual.blocks.fc1_bias",
          "visual.blocks.fc2_bias", "visual.blocks.proj_bias", "visual.blocks.qkv_bias", "visual.merger.fc1_bias",
          "visual.merger.fc2_bias"}
EMBEDDINGS = {"embed_tokens"}


@functools.cache
def _params():
    """The tiny model's params, every leaf random and away from 0 (biases start at zero, where
    decay would not show)."""
    params = nnx.to_pure_dict(nnx.state(abstract_model(CFG), nnx.Param))  # the tree, no init
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda x: (1.0 + rng.random(x.shape)).astype(np.float32), params)


def _flat(tree):
    return {".".join(str(k.key) for k in path): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def _one_step_with_zero_grads(opt: OptimizerConfig, params):
    tx = make_optimizer(opt, params)
    state = tx.init(params)
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zeros, state, params)
    return optax.apply_updates(params, updates)


def _opt(**kw):
    return OptimizerConfig(learning_rate=LR, warmup_steps=0, total_steps=10, weight_decay=WD, **kw)


@pytest.mark.parametrize("flags, masked", [
    ({}, NORMS | NORM_BIASES | BIASES | EMBEDDINGS),
    ({"decay_norms": True}, NORM_BIASES | BIASES | EMBEDDINGS),  # a norm's bias is still a bias
    ({"decay_biases": True}, NORMS | NORM_BIASES | EMBEDDINGS),  # ... and still part of a norm
    ({"decay_norms": True, "decay_biases": True}, EMBEDDINGS),
    ({"decay_embeddings": True}, NORMS | NORM_BIASES | BIASES),
    ({"decay_norms": True, "decay_biases": True, "decay_embeddings": True}, set()),
])
def test_masked_leaves_are_unchanged_and_decayed_ones_shrink_by_lr_wd_p(flags, masked):
    opt = _opt(**flags)
    assert float(learning_rate_schedule(opt)(0)) == pytest.approx(LR)
    params = _params()
    before, after = _flat(params), _flat(_one_step_with_zero_grads(opt, params))
    assert masked <= before.keys() and "lm_head" in before and "visual.patch_embed" in before
    # Stacked layers: a decoder norm scale is 2-D, a q bias 3-D, yet neither is decayed by default.
    assert before["decoder.layers.input_norm.scale"].ndim == 2 and before["decoder.layers.q_bias"].ndim == 3
    for name, p in before.items():
        if name in masked:
            np.testing.assert_array_equal(after[name], p, err_msg=name)
        else:  # Adam with a zero gradient: the update is -lr * wd * p
            np.testing.assert_allclose(p - after[name], LR * WD * p, rtol=2e-5, atol=1e-9, err_msg=name)
            assert np.abs(after[name]).sum() < np.abs(p).sum(), name
    assert {"lm_head", "visual.patch_embed", "decoder.layers.q_kernel"}.isdisjoint(masked)


def test_mask_follows_the_trainable_subset_and_abstract_params():
    # The loop builds the optimizer from abstract trainable params (ShapeDtypeStruct leaves) and
    # a frozen LLM removes every decoder leaf: the mask must be computed from whatever tree it gets.
    abstract = nnx.to_pure_dict(nnx.state(abstract_model(CFG), nnx.Param))
    trainable, _ = split_trainable(abstract, FreezeConfig(freeze_llm=True))
    shapes = jax.eval_shape(make_optimizer(_opt(), trainable).init, trainable)
    assert jax.tree.leaves(shapes)
    params = split_trainable(_params(), FreezeConfig(freeze_llm=True))[0]
    before, after = _flat(params), _flat(_one_step_with_zero_grads(_opt(), params))
    np.testing.assert_array_equal(after["visual.blocks.norm1.scale"], before["visual.blocks.norm1.scale"])
    np.testing.assert_array_equal(after["visual.merger.fc1_bias"], before["visual.merger.fc1_bias"])
    np.testing.assert_allclose(after["visual.merger.fc1_kernel"], before["visual.merger.fc1_kernel"] * (1 - LR * WD),
                               rtol=2e-6)
