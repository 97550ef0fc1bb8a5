"""Block-sparse segment attention (ours): the public entry point and its custom VJP.

Dense masked attention over a packed stream of N equal segments computes N times more score
blocks than the block-diagonal structure needs. Here every query block visits only the key
blocks whose segment-id range meets its own (``block_table.py``), in a flash-attention kernel
with fp32 online-softmax statistics: cost ~ sum of squared segment lengths. The forward saves
only (out, logsumexp); the backward recomputes probabilities block by block (FlashAttention-2),
with a dQ kernel over the forward's block ranges and a dK/dV kernel over the transposed ranges.

Two kernel variants share this wrapper and the bookkeeping: Mosaic for TPU (ranges as scalar
prefetch driving the index maps) and Triton for GPU (ranges as loop bounds). On CPU both run in
Pallas interpret mode, which is how the tests exercise them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from qwen2vl_jax.kernels import block_sparse_gpu, block_sparse_tpu
from qwen2vl_jax.kernels.block_table import kv_ranges, q_ranges
from qwen2vl_jax.kernels.common import KernelConfig, pad_head_dim, pad_sequences

_VARIANTS = {"tpu": block_sparse_tpu, "gpu": block_sparse_gpu}


def block_sparse_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array,
    *,
    causal: bool,
    scale: float,
    variant: str = "tpu",
    block_q: int = 128,
    block_kv: int = 128,
    interpret: bool = False,
) -> jax.Array:
    """q: [B, Sq, Hq, D]; k, v: [B, Skv, Hkv, D]; segment ids int32[B, Sq] / int32[B, Skv].

    Returns [B, Sq, Hq, D] in q's dtype. Causal queries sit at the last Sq key positions. Any
    Sq, Skv and D: sequences are padded to the block sizes and D to 128 (the MXU / Triton tile;
    Qwen2-VL's ViT has D = 80). ``variant``: "tpu" (Mosaic) or "gpu" (Triton).
    """
    if variant not in _VARIANTS:
        raise ValueError(f"block_sparse: unknown variant {variant!r}; choose 'tpu' or 'gpu'")
    sq, d = q.shape[1], q.shape[3]
    cfg = KernelConfig(causal=bool(causal), scale=float(scale), causal_offset=k.shape[1] - sq,
                       block_q=block_q, block_kv=block_kv, interpret=bool(interpret))
    q_segment_ids = q_segment_ids.astype(jnp.int32)
    kv_segment_ids = kv_segment_ids.astype(jnp.int32)
    q, k, v, qs, ks = pad_sequences(q, k, v, q_segment_ids, kv_segment_ids, block_q, block_kv)
    # [B, S, H, D] -> [B, H, S, D]: each (batch, head) is then one contiguous [S, D] matrix.
    q, k, v = (jnp.swapaxes(pad_head_dim(x, 128), 1, 2) for x in (q, k, v))
    out = _attention(q, k, v, qs, ks, cfg, variant)
    return jnp.swapaxes(out, 1, 2)[:, :sq, :, :d]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(q, k, v, q_seg, kv_seg, cfg: KernelConfig, variant: str):
    return _forward(q, k, v, q_seg, kv_seg, cfg, variant)[0]


def _forward(q, k, v, q_seg, kv_seg, cfg, variant):
    table = kv_ranges(q_seg, kv_seg, cfg.block_q, cfg.block_kv, cfg.causal, cfg.causal_offset)
    with jax.named_scope("block_sparse_attention_fwd"):
        return _VARIANTS[variant].forward(q, k, v, q_seg, kv_seg, table, cfg)


def _fwd(q, k, v, q_seg, kv_seg, cfg, variant):
    out, lse = _forward(q, k, v, q_seg, kv_seg, cfg, variant)
    return out, (q, k, v, q_seg, kv_seg, out, lse)


def _bwd(cfg, variant, res, do):
    q, k, v, q_seg, kv_seg, out, lse = res
    kernels = _VARIANTS[variant]
    do = do.astype(q.dtype)
    # delta_i = sum_d dO_id * O_id = sum_j P_ij dP_ij: the softmax-backward row term, once, in fp32.
    delta = jnp.sum(out.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
    args = (cfg.block_q, cfg.block_kv, cfg.causal, cfg.causal_offset)
    with jax.named_scope("block_sparse_attention_bwd"):
        dq = kernels.backward_dq(q, k, v, do, lse, delta, q_seg, kv_seg, kv_ranges(q_seg, kv_seg, *args), cfg)
        dk, dv = kernels.backward_dkv(q, k, v, do, lse, delta, q_seg, kv_seg,
                                      q_ranges(q_seg, kv_seg, *args), cfg)
    return dq, dk, dv, None, None


_attention.defvjp(_fwd, _bwd)
