"""Rematerialisation policies of the scanned layers, by name (``RuntimeConfig.remat``).

``jax.checkpoint`` keeps, of a layer's intermediate values, only what its policy saves and
recomputes the rest in the backward pass (JAX doc: "Control autodiff's saved values with
jax.checkpoint"). ``none`` keeps everything; ``full`` keeps only the layer inputs; ``dots``
keeps the outputs of matmuls without batch dimensions (the projections), recomputing norms,
activations and attention.
"""

from __future__ import annotations

import jax

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def remat(fn, policy_name: str):
    """``fn`` wrapped in ``jax.checkpoint`` with the named policy (unchanged for ``none``)."""
    if policy_name not in REMAT_POLICIES:
        raise ValueError(f"remat {policy_name!r} unknown; choose one of {sorted(REMAT_POLICIES)}")
    if policy_name == "none":
        return fn
    return jax.checkpoint(fn, policy=REMAT_POLICIES[policy_name], prevent_cse=False)
