"""cuDNN flash attention, used only where its masking is exactly ours.

Conclusion of checking what JAX exposes (jax 0.10.2): the public
``jax.nn.dot_product_attention(implementation="cudnn")`` knows a causal flag and per-row
sequence lengths, NOT segment ids. A packed row (several images in the ViT stream, several
samples in a training row) cannot be expressed, and our padding semantics (padding is its own
segment that attends to itself) differ from cuDNN's length masking on the padded rows. cuDNN's
packed "THD" mode exists only in the private ``jax._src.cudnn.fused_attention_stablehlo``
(``q_offsets``/``kv_offsets``); it needs a static maximum segment count and contiguous segments,
and we could not verify it without a GPU. So ``cudnn`` is offered for unsegmented attention
(segment ids ``None``) and REFUSES segment ids with an error, instead of silently ignoring them
the way MaxText's cuDNN path does (its issue #4476).
"""

from __future__ import annotations

import jax


def cudnn_attention(q, k, v, *, causal: bool, scale: float) -> jax.Array:
    """q: [B, Sq, Hq, D]; k, v: [B, Skv, Hkv, D]; one segment per row. Returns [B, Sq, Hq, D]."""
    if causal and q.shape[1] != k.shape[1]:
        raise ValueError("cudnn: causal attention needs Sq == Skv (cuDNN aligns the diagonal top-left)")
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=causal, implementation="cudnn")


def refuse_segments() -> None:
    raise ValueError(
        "attention impl 'cudnn' cannot honour segment ids: jax.nn.dot_product_attention's cuDNN "
        "path masks by sequence length only, so packed segments would silently attend to each "
        "other. Use impl='block_sparse' (ours), 'pallas_gpu' or 'xla', or pass segment ids None "
        "for unpacked attention.")
