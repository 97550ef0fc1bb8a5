"""transformers' logits processors and warpers, as fixed-shape jax functions on float32[B, V].

Order as in ``GenerationMixin._get_logits_processor``: repetition penalty, min_new_tokens (eos
masked), then, when sampling, temperature, top-k, top-p and a categorical draw; greedy is argmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def process_logits(logits: jax.Array, presence: jax.Array, step: jax.Array, knobs: dict,
                   do_sample: bool) -> jax.Array:
    """transformers' logits processors (and warpers if sampling) on float32[B, V]."""
    rp = knobs["repetition_penalty"]
    penalized = jnp.where(logits > 0, logits / rp, logits * rp)
    logits = jnp.where(presence, penalized, logits)  # rp == 1 is an exact identity
    vocab = jnp.arange(logits.shape[-1])
    is_eos = (vocab[:, None] == knobs["eos_ids"][None, :]).any(-1)
    logits = jnp.where(is_eos[None] & (step < knobs["min_new_tokens"]), -jnp.inf, logits)
    if not do_sample:
        return logits
    logits = logits / knobs["temperature"]
    k = knobs["top_k"]
    sorted_desc = -jnp.sort(-logits, axis=-1)
    kth = jax.lax.dynamic_index_in_dim(sorted_desc, jnp.clip(k - 1, 0, logits.shape[-1] - 1), axis=1)
    logits = jnp.where((k > 0) & (logits < kth), -jnp.inf, logits)
    # top-p as transformers: in ascending order, drop the low tail whose cumulative probability
    # is <= 1 - top_p, always keeping the most likely entry; decided per sorted position and
    # scattered back, so tied logits are dropped one by one (never all of them).
    order = jnp.argsort(logits, axis=-1)
    sorted_asc = jnp.take_along_axis(logits, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_asc, axis=-1), axis=-1)
    drop_sorted = (cum <= 1.0 - knobs["top_p"]).at[:, -1].set(False)
    rows = jnp.arange(logits.shape[0])[:, None]
    drop = jnp.zeros_like(drop_sorted).at[rows, order].set(drop_sorted)
    return jnp.where(drop, -jnp.inf, logits)


def pick_token(logits: jax.Array, rng: jax.Array, do_sample: bool) -> jax.Array:
    if do_sample:
        return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
