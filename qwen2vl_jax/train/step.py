"""The pure jitted train step: (params, opt_state, batch) -> (params, opt_state, metrics).

``batch`` holds the model inputs of ``layout`` / ``packing`` plus ``labels`` [B, S] (other keys
are ignored), every leaf with a leading microbatch axis [A, ...] (gradient accumulation: A >= 1),
optionally followed by a packing-group axis [A, G, ...]: each group has its own vision stream,
and the groups are split over the mesh's batch axes (``groups`` in the rules table).
Gradients are token-weighted, so A microbatches equal one batch of A times the rows.

Memory: only the trainable parameters are differentiated and updated (frozen parts get no
gradient buffer and no optimizer state: ``freezing.split_trainable``); the loss is computed from
the final hidden states in sequence chunks (``loss.chunked_next_token_loss_sum``), so [B, S, V]
logits never exist; the towers' layers are rematerialised by their ``RuntimeConfig`` policies.
Compute runs in the runtime's ``dtype`` over ``param_dtype`` master weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from qwen2vl_jax.layout import MODEL_INPUT_KEYS
from qwen2vl_jax.sharding.rules import mesh_axes_of, reserved_axes
from qwen2vl_jax.train.freezing import FreezeConfig, merge_trainable, split_trainable
from qwen2vl_jax.train.loss import DEFAULT_CHUNK_SIZE, chunked_next_token_loss_sum


def make_loss_sum(graphdef: nnx.GraphDef, *, z_loss_weight: float = 0.0, chunk_size: int = DEFAULT_CHUNK_SIZE
                  ) -> Callable:
    """``loss_sum(params, batch) -> (total, stats)`` of one microbatch ([B, S] or [G, B, S])."""

    def loss_sum(params, batch):
        model = nnx.merge(graphdef, params)
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}

        def one_group(inputs, labels):
            hidden = model(inputs, hidden_only=True)["hidden"]
            return chunked_next_token_loss_sum(hidden, model.head_weight(), labels,
                                               tied=model.text.tie_word_embeddings, dtype=model.dtype,
                                               z_loss_weight=z_loss_weight, chunk_size=chunk_size)

        if batch["input_ids"].ndim == 2:
            return one_group(inputs, batch["labels"])
        # Packing groups [G, ...]: split over the batch axes of the mesh in context, so every
        # constraint inside sees the group axis sharded (vmap's spmd_axis_name).
        mesh = jax.sharding.get_abstract_mesh()
        axes = None if mesh.empty else (mesh_axes_of("groups", mesh, batch["input_ids"].shape[0]) or None)
        with reserved_axes(axes):
            total, aux = jax.vmap(one_group, spmd_axis_name=axes)(inputs, batch["labels"])
        return total.sum(), jax.tree.map(jnp.sum, aux)

    return loss_sum


def make_train_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, freeze: FreezeConfig, *,
                    z_loss_weight: float = 0.0, schedule: Callable[[Any], Any] | None = None,
                    chunk_size: int = DEFAULT_CHUNK_SIZE, shardings: tuple[Any, Any] | None = None) -> Callable:
    """The jitted step. ``optimizer`` is over the trainable part of the params
    (``optimizer.make_optimizer(cfg, split_trainable(params, freeze)[0])``). ``shardings``:
    (params, opt_state) shardings the step's outputs keep (the inputs' under a mesh)."""
    grad_fn = jax.value_and_grad(
        lambda trainable, frozen, mb: loss_sum(merge_trainable(trainable, frozen), mb), has_aux=True)
    loss_sum = make_loss_sum(graphdef, z_loss_weight=z_loss_weight, chunk_size=chunk_size)

    def step(params, opt_state, batch):
        trainable, frozen = split_trainable(params, freeze)

        def micro(carry, mb):
            g_acc, stats = carry
            (_, aux), g = grad_fn(trainable, frozen, mb)
            g_acc = jax.tree.map(jnp.add, g_acc, g)
            stats = {k: stats[k] + aux[k] for k in stats}
            return (g_acc, stats), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)
        stats0 = {"ce_sum": jnp.float32(0), "z_sum": jnp.float32(0), "tokens": jnp.int32(0)}
        (g_sum, stats), _ = jax.lax.scan(micro, (zeros, stats0), batch)
        tokens = jnp.maximum(stats["tokens"], 1)
        grads = jax.tree.map(lambda g, p: (g / tokens).astype(p.dtype), g_sum, trainable)
        loss, grad_norm = stats["ce_sum"] / tokens, optax.tree.norm(grads)
        # A non-finite loss or gradient applies no update: params and optimizer state pass
        # through unchanged (the loop counts it and stops after too many in a row).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(stats["z_sum"])
        updates, new_opt_state = optimizer.update(grads, opt_state, trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        trainable = jax.tree.map(keep, new_trainable, trainable)
        opt_state = jax.tree.map(keep, new_opt_state, opt_state)
        metrics = {
            "loss": loss,
            "z_loss": stats["z_sum"] / tokens,
            "grad_norm": grad_norm,
            "tokens": stats["tokens"],
            "finite": finite,
        }
        if schedule is not None:
            metrics["learning_rate"] = schedule(_step_count(opt_state))
        return merge_trainable(trainable, frozen), opt_state, metrics

    out = None if shardings is None else (shardings[0], shardings[1], None)
    return jax.jit(step, donate_argnums=(0, 1), out_shardings=out)


def _step_count(opt_state: Any) -> jax.Array:
    """The update count of the (first) scale_by_adam state: the step the schedule was read at."""
    for leaf_state in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState)):
        if isinstance(leaf_state, optax.ScaleByAdamState):
            return leaf_state.count - 1
    return jnp.int32(0)
