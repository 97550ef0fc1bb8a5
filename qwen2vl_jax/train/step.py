"""The pure jitted train step: (params, opt_state, batch) -> (params, opt_state, metrics).

``batch`` holds the model inputs of ``layout`` / ``packing`` plus ``labels`` [B, S] (other keys
are ignored), every leaf with a leading microbatch axis [A, ...] (gradient accumulation: A >= 1),
optionally followed by a packing-group axis [A, G, ...] (one packed group per data-parallel
device: see data_pipelines/pipeline.py). Gradients are token-weighted, so A
microbatches equal one batch of A times the rows. Frozen components are wrapped in
stop_gradient (XLA drops their weight gradients) and the optimizer gives them zero updates.
Compute runs in the model config's ``dtype`` over ``param_dtype`` master weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from qwen2vl_jax.layout import MODEL_INPUT_KEYS
from qwen2vl_jax.train.freezing import FreezeConfig, trainable_labels
from qwen2vl_jax.train.loss import next_token_loss_sum


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, params_like: Any,
                    freeze: FreezeConfig, *, z_loss_weight: float = 0.0,
                    schedule: Callable[[Any], Any] | None = None) -> Callable:
    labels = trainable_labels(params_like, freeze)

    def loss_sum(params, batch):
        params = jax.tree.map(lambda p, lab: p if lab == "train" else jax.lax.stop_gradient(p), params, labels)
        model = nnx.merge(graphdef, params)
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}

        def one_group(inputs, labels):
            return next_token_loss_sum(model(inputs)["logits"], labels, z_loss_weight)

        if batch["input_ids"].ndim == 2:
            return one_group(inputs, batch["labels"])
        # Packing groups [G, ...]: each has its own vision stream (one per data-parallel device,
        # so the scatter never crosses devices); sharding G over the mesh splits the work.
        total, aux = jax.vmap(one_group)(inputs, batch["labels"])
        return total.sum(), jax.tree.map(jnp.sum, aux)

    grad_fn = jax.value_and_grad(loss_sum, has_aux=True)

    def step(params, opt_state, batch):
        def micro(carry, mb):
            g_acc, stats = carry
            (_, aux), g = grad_fn(params, mb)
            g_acc = jax.tree.map(jnp.add, g_acc, g)
            stats = {k: stats[k] + aux[k] for k in stats}
            return (g_acc, stats), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        stats0 = {"ce_sum": jnp.float32(0), "z_sum": jnp.float32(0), "tokens": jnp.int32(0)}
        (g_sum, stats), _ = jax.lax.scan(micro, (zeros, stats0), batch)
        tokens = jnp.maximum(stats["tokens"], 1)
        grads = jax.tree.map(lambda g, p: (g / tokens).astype(p.dtype), g_sum, params)
        trainable = [g for g, lab in zip(jax.tree.leaves(grads), jax.tree.leaves(labels)) if lab == "train"]
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {
            "loss": stats["ce_sum"] / tokens,
            "z_loss": stats["z_sum"] / tokens,
            "grad_norm": optax.tree.norm(trainable),
            "tokens": stats["tokens"],
        }
        if schedule is not None:
            metrics["learning_rate"] = schedule(_step_count(opt_state))
        return params, opt_state, metrics

    return jax.jit(step, donate_argnums=(0, 1))


def _step_count(opt_state: Any) -> jax.Array:
    """The update count of the (first) scale_by_adam state: the step the schedule was read at."""
    for leaf_state in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)):
        if isinstance(leaf_state, optax.ScaleByAdamState):
            return leaf_state.count - 1
    return jnp.int32(0)
