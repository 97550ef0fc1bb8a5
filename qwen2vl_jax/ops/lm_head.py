"""The language-model head: hidden states -> float32 vocabulary logits.

One definition shared by the model's ``logits_from_hidden`` and the chunked training loss
(``train/loss.py``), so the two cannot drift apart.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def lm_head_logits(h: jax.Array, weight: jax.Array, *, tied: bool, dtype) -> jax.Array:
    """float32[..., V] logits of hidden states ``h`` [..., D].

    ``weight`` is the tied input embedding [V, D] (``tied=True``) or the untied ``lm_head`` [D, V].
    The weight is cast to the compute ``dtype`` (``h`` is used as given: the model hands it over
    in that dtype already) and the matmul accumulates in float32, as transformers 4.45's
    ``logits.float()``.
    """
    w = weight.astype(dtype)
    if tied:
        return jnp.einsum("...d,vd->...v", h, w, preferred_element_type=jnp.float32)
    return jnp.einsum("...d,dv->...v", h, w, preferred_element_type=jnp.float32)
