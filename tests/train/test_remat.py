"""Remat policies per tower, by name: the same gradients, less memory."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from qwen2vl_jax import RuntimeConfig, get_preset
from qwen2vl_jax.layout.packing import packed_batch_shapes
from qwen2vl_jax.model import Qwen2VL, abstract_model
from qwen2vl_jax.nn.remat import REMAT_POLICIES
from qwen2vl_jax.train.step import make_loss_sum

TINY = get_preset("tiny")
# Big enough that saved activations dominate the compiled program's temporaries.
MID = TINY.replace(text=dataclasses.replace(TINY.text, hidden_size=128, intermediate_size=512,
                                            num_hidden_layers=2, vocab_size=512, mrope_section=(8, 4, 4)))
MID = MID.replace(vision=dataclasses.replace(MID.vision, out_hidden_size=128, depth=2))


def _batch(cfg, rows=2, text=256, patches=256, seed=0):
    rng = np.random.default_rng(seed)
    shapes = packed_batch_shapes(cfg, rows, text, patches)
    b = {k: np.zeros(s, dt) for k, (s, dt) in shapes.items()}
    b["input_ids"] = rng.integers(3, 100, size=(rows, text)).astype(np.int32)
    b["labels"] = b["input_ids"].copy()
    b["segment_ids"][:] = 1
    b["position_ids"][:] = np.arange(text)
    b["scatter_index"][:] = -1
    b["pixel_values"] = rng.standard_normal(shapes["pixel_values"][0]).astype(np.float32)
    return b


def _grad_fn(cfg, runtime):
    graphdef = nnx.graphdef(abstract_model(cfg, runtime))
    return jax.jit(jax.grad(lambda p, b: make_loss_sum(graphdef)(p, b)[0]))


@pytest.fixture(scope="module")
def reference():
    params = nnx.to_pure_dict(nnx.state(Qwen2VL(TINY, rngs=nnx.Rngs(0)), nnx.Param))
    batch = _batch(TINY, text=32, patches=64)
    return params, batch, _grad_fn(TINY, RuntimeConfig())(params, batch)


@pytest.mark.parametrize("policy", [p for p in REMAT_POLICIES if p != "none"])
def test_every_policy_gives_the_same_gradients(reference, policy):
    params, batch, want = reference
    got = _grad_fn(TINY, RuntimeConfig(vision_remat=policy, text_remat=policy))(params, batch)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)  # fusion order only


def test_policies_trade_memory_for_recompute():
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          nnx.to_pure_dict(nnx.state(abstract_model(MID), nnx.Param)))
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _batch(MID))

    def temp(vision, text):
        fn = _grad_fn(MID, RuntimeConfig(vision_remat=vision, text_remat=text))
        return fn.lower(params, batch).compile().memory_analysis().temp_size_in_bytes

    none = temp("none", "none")
    saved = {p: temp(p, p) for p in REMAT_POLICIES if p != "none"}
    # Measured at 4 layers per tower (2 x 256 tokens): none 72.8 MB; full 17.7, dots 26.1,
    # attention 17.2, qkv_attention 21.9 MB.
    assert all(t < 0.5 * none for t in saved.values()), (none, saved)
    text_only, vision_only = temp("none", "full"), temp("full", "none")
    assert saved["full"] < text_only < none and saved["full"] < vision_only < none  # each tower its own
