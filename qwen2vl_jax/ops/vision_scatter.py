"""Place merged vision tokens into the text embedding sequence (docs/numerics.md, Scatter order).

The host computes ``scatter_index`` (layout.vision_scatter_index): for every (batch, position),
the row of the concatenated [image features; video features] that fills it, or -1 for text.
A gather with a static-shape index replaces torch's ``masked_scatter``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def scatter_vision_tokens(text_embeds: jax.Array, vision_feats: jax.Array,
                          scatter_index: jax.Array) -> jax.Array:
    """text_embeds: [B, S, D]; vision_feats: [M, D]; scatter_index: int32[B, S] (-1 = keep text)."""
    feats = vision_feats.astype(text_embeds.dtype)  # HF casts features to the embedding dtype
    gathered = jnp.take(feats, jnp.maximum(scatter_index, 0), axis=0)
    return jnp.where((scatter_index >= 0)[..., None], gathered, text_embeds)
