"""Rematerialisation policies of the scanned layers, by name (``RuntimeConfig.vision_remat`` /
``text_remat``).

``jax.checkpoint`` keeps, of a layer's intermediate values, only what its policy saves and
recomputes the rest in the backward pass (JAX doc: "Gradient checkpointing with
jax.checkpoint"). The layers tag their main values with ``checkpoint_name`` (``SAVE_NAMES``), so
a policy can keep exactly those:

  none            keep everything (fastest, most memory)
  full            keep only each layer's input; recompute the whole layer
  dots            keep the outputs of the weight matmuls (projections), recompute the rest
  attention       keep the attention output of each layer (the costly part to recompute)
  qkv_attention   keep q, k, v and the attention output
"""

from __future__ import annotations

import jax
from jax.ad_checkpoint import checkpoint_name

QUERY, KEY, VALUE, ATTENTION_OUT = "query", "key", "value", "attention_out"
SAVE_NAMES = (QUERY, KEY, VALUE, ATTENTION_OUT)

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "attention": jax.checkpoint_policies.save_only_these_names(ATTENTION_OUT),
    "qkv_attention": jax.checkpoint_policies.save_only_these_names(QUERY, KEY, VALUE, ATTENTION_OUT),
}


def tag(x: jax.Array, name: str) -> jax.Array:
    """Name ``x`` for the policies above (an identity otherwise)."""
    return checkpoint_name(x, name)


def remat(fn, policy_name: str):
    """``fn`` wrapped in ``jax.checkpoint`` with the named policy (unchanged for ``none``)."""
    if policy_name not in REMAT_POLICIES:
        raise ValueError(f"remat {policy_name!r} unknown; choose one of {sorted(REMAT_POLICIES)}")
    if policy_name == "none":
        return fn
    return jax.checkpoint(fn, policy=REMAT_POLICIES[policy_name], prevent_cse=False)
