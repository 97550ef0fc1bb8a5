"""Next-token cross-entropy on labelled tokens (transformers' shift), with optional z-loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from qwen2vl_jax.layout.inputs import IGNORE_INDEX


def next_token_loss_sum(logits: jax.Array, labels: jax.Array, z_loss_weight: float = 0.0
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Summed (not averaged) loss over labelled tokens, and the token count.

    logits: float[B, S, V] for inputs [B, S]; labels: int[B, S] aligned with the inputs, with
    -100 where no loss is taken (as transformers: position t predicts labels[t + 1]). Summing
    lets gradient accumulation weight every token equally; divide by ``tokens`` afterwards.
    z-loss adds ``z_loss_weight * logsumexp(logits)^2`` per labelled token (PaLM).
    """
    logits = logits[:, :-1].astype(jnp.float32)
    targets = labels[:, 1:]
    valid = targets != IGNORE_INDEX
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    ce = jnp.where(valid, lse - picked, 0.0)
    z = jnp.where(valid, jnp.square(lse), 0.0)
    total = ce.sum() + z_loss_weight * z.sum()
    return total, {"ce_sum": ce.sum(), "z_sum": z.sum(), "tokens": valid.sum()}
