"""JAX's Pallas-Triton flash attention (``ops.gpu.attention.mha``) behind our signature.

``mha`` takes ONE segment-id array for queries and keys, so it serves self-attention only
(Sq == Skv and the same ids, which the ViT and the decoder's training/prefill pass are). It has
no GQA (kv heads are repeated), needs lengths divisible by its blocks (we pad, giving the padding a
fresh segment id so padded queries see padded keys and nothing else) and aligns causal masks at
the top-left, which equals ours when Sq == Skv. Every key block below the causal diagonal is
computed: segment ids mask inside blocks but skip nothing.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import attention as gpu_attention

from qwen2vl_jax.kernels.common import pad_head_dim, round_up


def pallas_gpu_attention(q, k, v, segment_ids, *, causal: bool, scale: float, block_q: int = 128,
                         block_kv: int = 128, block_bwd: int = 32, interpret: bool = False):
    """q: [B, S, Hq, D]; k, v: [B, S, Hkv, D]; segment_ids int32[B, S]. Returns [B, S, Hq, D]."""
    b, s, hq, d = q.shape
    if k.shape[1] != s:
        raise ValueError(f"pallas_gpu: self-attention only (Sq {s} != Skv {k.shape[1]}); use block_sparse")
    block = max(block_q, block_kv, block_bwd)
    pad = round_up(s, block) - s
    seg = segment_ids.astype(jnp.int32)
    if pad:
        fresh = seg.max(axis=1, keepdims=True) + 1
        seg = jnp.concatenate([seg, jnp.broadcast_to(fresh, (b, pad))], axis=1)
        q, k, v = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (q, k, v))
    group = hq // k.shape[2]
    k, v = (jnp.repeat(x, group, axis=2) for x in (k, v))  # query head h uses kv head h // group
    q, k, v = (pad_head_dim(x, 128) for x in (q, k, v))  # Triton tiles are powers of two
    sizes = gpu_attention.BlockSizes(block_q=block_q, block_k=block_kv, block_q_dkv=block_bwd,
                                     block_kv_dkv=block_bwd, block_q_dq=block_bwd, block_kv_dq=block_bwd)
    out = gpu_attention.mha(q, k, v, seg, sm_scale=scale, causal=causal, block_sizes=sizes,
                            interpret=interpret)
    return out[:, :s, :, :d].astype(q.dtype)
