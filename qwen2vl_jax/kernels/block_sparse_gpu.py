"""Block-sparse segment attention for GPU (Pallas Triton): forward, dQ and dK/dV kernels.

Same layout and block ranges as the TPU variant (``block_sparse_tpu.py``), but Triton programs
can loop with data-dependent bounds, so each program loads its ``(start, count)`` pair and runs
``fori_loop(0, count)`` over exactly the blocks it needs: no idle grid steps at all. Grid:
(query blocks, B, Hq) for the forward and dQ; (key blocks, B, Hkv) for dK/dV, which also loops
over the query heads of its GQA group so a kv head's gradient is summed in registers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from qwen2vl_jax.kernels.block_table import BlockRanges
from qwen2vl_jax.kernels.common import MASK_VALUE, KernelConfig


def _ranges(table: BlockRanges) -> jax.Array:
    """int32[B, n, 2]: (start, count) per block; each program reads its pair as two scalars."""
    return jnp.stack([table.start, table.count], axis=-1)


def _allowed(q_ids, k_ids, q_start, k_start, cfg: KernelConfig):
    """bool[bq, bkv] for query ids [bq] and key ids [bkv] starting at the given positions."""
    allowed = q_ids[:, None] == k_ids[None, :]
    if cfg.causal:
        q_pos = q_start + jnp.arange(q_ids.shape[0]) + cfg.causal_offset
        k_pos = k_start + jnp.arange(k_ids.shape[0])
        allowed = allowed & (q_pos[:, None] >= k_pos[None, :])
    return allowed


def _compiler(d: int):
    return plgpu.CompilerParams(num_warps=4 if d <= 64 else 8, num_stages=2)


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(range_ref, q_ref, k_ref, v_ref, qid_ref, kid_ref, o_ref, lse_ref, *, cfg: KernelConfig):
    bq, bkv = cfg.block_q, cfg.block_kv
    i = pl.program_id(0)
    start, count = range_ref[0], range_ref[1]
    q, q_ids = q_ref[...], qid_ref[...]

    def body(t, carry):
        acc, m, l = carry
        j = start + t
        ks = pl.ds(pl.multiple_of(j * bkv, bkv), bkv)
        k, v = k_ref[ks, :], v_ref[ks, :]
        s = plgpu.dot(q, k, trans_b=True) * cfg.scale
        allowed = _allowed(q_ids, kid_ref[ks], i * bq, j * bkv, cfg)
        s = jnp.where(allowed, s, MASK_VALUE)
        m_next = jnp.maximum(m, s.max(axis=-1))
        p = jnp.where(allowed, jnp.exp(s - m_next[:, None]), 0.0)
        alpha = jnp.exp(m - m_next)
        l = alpha * l + p.sum(axis=-1)
        acc = acc * alpha[:, None] + plgpu.dot(p.astype(v.dtype), v)
        return acc, m_next, l

    d = q.shape[-1]
    init = (jnp.zeros((bq, d), jnp.float32), jnp.full((bq,), MASK_VALUE, jnp.float32),
            jnp.zeros((bq,), jnp.float32))
    acc, m, l = lax.fori_loop(0, count, body, init)
    # Empty rows (caller-made only) get 0 and an lse that makes the backward's p vanish.
    o_ref[...] = (acc / jnp.where(l > 0, l, 1.0)[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(l > 0, m + jnp.log(jnp.maximum(l, 1e-30)), -MASK_VALUE)


def forward(q, k, v, q_seg, kv_seg, table: BlockRanges, cfg: KernelConfig):
    """Returns out [B, Hq, Sq, D] and lse float32[B, Hq, Sq]."""
    b, hq, sq, d = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    g, bq = hq // hkv, cfg.block_q
    out, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg),
        grid=(sq // bq, b, hq),
        in_specs=[
            pl.BlockSpec((None, None, 2), lambda i, bi, h: (bi, i, 0)),
            pl.BlockSpec((None, None, bq, d), lambda i, bi, h: (bi, h, i, 0)),
            pl.BlockSpec((None, None, skv, d), lambda i, bi, h: (bi, h // g, 0, 0)),
            pl.BlockSpec((None, None, skv, d), lambda i, bi, h: (bi, h // g, 0, 0)),
            pl.BlockSpec((None, bq), lambda i, bi, h: (bi, i)),
            pl.BlockSpec((None, skv), lambda i, bi, h: (bi, 0)),
        ],
        out_specs=[pl.BlockSpec((None, None, bq, d), lambda i, bi, h: (bi, h, i, 0)),
                   pl.BlockSpec((None, None, bq), lambda i, bi, h: (bi, h, i))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, hq, sq), jnp.float32)],
        compiler_params=_compiler(d),
        interpret=cfg.interpret,
        name="block_sparse_fwd",
    )(_ranges(table), q, k, v, q_seg, kv_seg)
    return out, lse


# ----------------------------------------------------------------------------- dQ


def _dq_kernel(range_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qid_ref, kid_ref, dq_ref,
               *, cfg: KernelConfig):
    bq, bkv = cfg.block_q, cfg.block_kv
    i = pl.program_id(0)
    start, count = range_ref[0], range_ref[1]
    q, do, q_ids = q_ref[...], do_ref[...], qid_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]

    def body(t, acc):
        j = start + t
        ks = pl.ds(pl.multiple_of(j * bkv, bkv), bkv)
        k, v = k_ref[ks, :], v_ref[ks, :]
        s = plgpu.dot(q, k, trans_b=True) * cfg.scale
        allowed = _allowed(q_ids, kid_ref[ks], i * bq, j * bkv, cfg)
        p = jnp.where(allowed, jnp.exp(s - lse[:, None]), 0.0)
        dp = plgpu.dot(do, v, trans_b=True)
        ds = p * (dp - delta[:, None])
        return acc + plgpu.dot(ds.astype(k.dtype), k)

    acc = lax.fori_loop(0, count, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = (acc * cfg.scale).astype(dq_ref.dtype)


def backward_dq(q, k, v, do, lse, delta, q_seg, kv_seg, table: BlockRanges, cfg: KernelConfig):
    b, hq, sq, d = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    g, bq = hq // hkv, cfg.block_q
    qmap = lambda i, bi, h: (bi, h, i, 0)
    vec = lambda i, bi, h: (bi, h, i)
    return pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg),
        grid=(sq // bq, b, hq),
        in_specs=[
            pl.BlockSpec((None, None, 2), lambda i, bi, h: (bi, i, 0)),
            pl.BlockSpec((None, None, bq, d), qmap),
            pl.BlockSpec((None, None, skv, d), lambda i, bi, h: (bi, h // g, 0, 0)),
            pl.BlockSpec((None, None, skv, d), lambda i, bi, h: (bi, h // g, 0, 0)),
            pl.BlockSpec((None, None, bq, d), qmap),
            pl.BlockSpec((None, None, bq), vec),
            pl.BlockSpec((None, None, bq), vec),
            pl.BlockSpec((None, bq), lambda i, bi, h: (bi, i)),
            pl.BlockSpec((None, skv), lambda i, bi, h: (bi, 0)),
        ],
        out_specs=pl.BlockSpec((None, None, bq, d), qmap),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_compiler(d),
        interpret=cfg.interpret,
        name="block_sparse_dq",
    )(_ranges(table), q, k, v, do, lse, delta, q_seg, kv_seg)


# ----------------------------------------------------------------------------- dK / dV


def _dkv_kernel(range_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, kid_ref, qid_ref,
                dk_ref, dv_ref, *, cfg: KernelConfig, group: int):
    bq, bkv = cfg.block_q, cfg.block_kv
    j = pl.program_id(0)
    start, count = range_ref[0], range_ref[1]
    k, v, k_ids = k_ref[...], v_ref[...], kid_ref[...]

    def body(step, carry):
        dk, dv = carry
        gi, t = step // count, step % count  # the group's query heads x their query blocks
        i = start + t
        qs = pl.ds(pl.multiple_of(i * bq, bq), bq)
        q, do = q_ref[gi, qs, :], do_ref[gi, qs, :]
        lse, delta = lse_ref[gi, qs], delta_ref[gi, qs]
        s = plgpu.dot(q, k, trans_b=True) * cfg.scale
        allowed = _allowed(qid_ref[qs], k_ids, i * bq, j * bkv, cfg)
        p = jnp.where(allowed, jnp.exp(s - lse[:, None]), 0.0)
        dv = dv + plgpu.dot(p.astype(do.dtype), do, trans_a=True)
        dp = plgpu.dot(do, v, trans_b=True)
        ds = p * (dp - delta[:, None])
        dk = dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True)
        return dk, dv

    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = lax.fori_loop(0, group * count, body, (zeros, zeros))
    dk_ref[...] = (dk * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def backward_dkv(q, k, v, do, lse, delta, q_seg, kv_seg, table: BlockRanges, cfg: KernelConfig):
    """dK, dV [B, Hkv, Skv, D]; ``table`` gives per key block the query blocks to visit."""
    b, hq, sq, d = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    g, bkv = hq // hkv, cfg.block_kv
    kmap = lambda j, bi, h: (bi, h, j, 0)
    return pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, group=g),
        grid=(skv // bkv, b, hkv),
        in_specs=[
            pl.BlockSpec((None, None, 2), lambda j, bi, h: (bi, j, 0)),
            pl.BlockSpec((None, g, sq, d), lambda j, bi, h: (bi, h, 0, 0)),
            pl.BlockSpec((None, None, bkv, d), kmap),
            pl.BlockSpec((None, None, bkv, d), kmap),
            pl.BlockSpec((None, g, sq, d), lambda j, bi, h: (bi, h, 0, 0)),
            pl.BlockSpec((None, g, sq), lambda j, bi, h: (bi, h, 0)),
            pl.BlockSpec((None, g, sq), lambda j, bi, h: (bi, h, 0)),
            pl.BlockSpec((None, bkv), lambda j, bi, h: (bi, j)),
            pl.BlockSpec((None, sq), lambda j, bi, h: (bi, 0)),
        ],
        out_specs=[pl.BlockSpec((None, None, bkv, d), kmap), pl.BlockSpec((None, None, bkv, d), kmap)],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=_compiler(d),
        interpret=cfg.interpret,
        name="block_sparse_dkv",
    )(_ranges(table), q, k, v, do, lse, delta, kv_seg, q_seg)
