"""Block-sparse segment attention for TPU (Pallas Mosaic): forward, dQ and dK/dV kernels.

Layout inside the kernels: q, dO, out [B, Hq, Sq, D]; k, v [B, Hkv, Skv, D] with D a multiple of
128. The block ranges (``block_table.py``) are scalar-prefetched into SMEM and used by the index
maps: grid step ``t`` of query block ``i`` fetches key block ``start[i] + min(t, count[i] - 1)``.
Steps past ``count[i]`` keep the same block index, so Mosaic's pipeline issues no new DMA, and
their compute is skipped with ``pl.when``. The innermost grid axis has the dynamic length
``max_count`` (the widest range), so a stream of many images pays for its images, not for the
stream length squared.

Segment ids are laid out the way the MXU-shaped tiles want them (as splash attention does): for
the sequence that runs along sublanes, ``[B, S, W]`` (id repeated over W lanes); for the one
along lanes, ``[B, 8, S]`` (repeated over 8 sublanes). The dK/dV kernel works on transposed
scores (keys in sublanes) so every matmul is a plain NN or NT product.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from qwen2vl_jax.kernels.block_table import BlockRanges
from qwen2vl_jax.kernels.common import MASK_VALUE, KernelConfig

LANES, SUBLANES = 128, 8
NT = (((1,), (1,)), ((), ()))  # a @ b.T
NN = (((1,), (0,)), ((), ()))  # a @ b


def _lanes(block: int) -> int:
    """Lane width of a per-row vector layout: 128 on hardware, the block itself when smaller."""
    return LANES if block % LANES == 0 else block


def _sublane_ids(seg: jax.Array, block_other: int) -> jax.Array:
    """int32[B, S] -> [B, S, W]: ids down the sublanes, repeated across W lanes."""
    w = _lanes(block_other)
    return jnp.broadcast_to(seg[:, :, None], (*seg.shape, w))


def _lane_ids(seg: jax.Array) -> jax.Array:
    """int32[B, S] -> [B, 8, S]: ids along the lanes, repeated over 8 sublanes."""
    return jnp.broadcast_to(seg[:, None, :], (seg.shape[0], SUBLANES, seg.shape[1]))


def _widen(x: jax.Array, width: int) -> jax.Array:
    """Tile a [rows, W] lane-replicated array to [rows, width] (width a multiple of W)."""
    reps = width // x.shape[1]
    return x if reps == 1 else jnp.tile(x, (1, reps))


def _mask(row_ids, col_ids, row_start, col_start, cfg: KernelConfig, q_along_rows: bool):
    """bool[rows, cols] of allowed (query, key) pairs for one score tile.

    ``row_ids``: [rows, W] ids of the sequence running down the sublanes (lane-replicated);
    ``col_ids``: [1, cols] ids of the one running along the lanes. ``*_start``: the first
    sequence position of the tile along each direction.
    """
    rows, cols = row_ids.shape[0], col_ids.shape[1]
    allowed = _widen(row_ids, cols) == col_ids
    if cfg.causal:
        r = row_start + lax.broadcasted_iota(jnp.int32, (rows, cols), 0)
        c = col_start + lax.broadcasted_iota(jnp.int32, (rows, cols), 1)
        if q_along_rows:  # rows are queries, cols keys
            allowed = allowed & (r + cfg.causal_offset >= c)
        else:  # rows are keys, cols queries
            allowed = allowed & (c + cfg.causal_offset >= r)
    return allowed


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(start_ref, count_ref, q_ref, k_ref, v_ref, qid_ref, kid_ref, o_ref, lse_ref,
                m_sc, l_sc, acc_sc, *, cfg: KernelConfig, nq: int):
    b, i, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    row = b * nq + i
    count = count_ref[row]

    @pl.when(t == 0)
    def _init():
        m_sc[...] = jnp.full_like(m_sc, MASK_VALUE)
        l_sc[...] = jnp.zeros_like(l_sc)
        acc_sc[...] = jnp.zeros_like(acc_sc)

    @pl.when(t < count)
    def _step():
        j = start_ref[row] + t
        q, k, v = q_ref[...], k_ref[...], v_ref[...]
        s = lax.dot_general(q, k, NT, preferred_element_type=jnp.float32) * cfg.scale
        allowed = _mask(qid_ref[...], kid_ref[:1, :], i * cfg.block_q, j * cfg.block_kv, cfg, True)
        s = jnp.where(allowed, s, MASK_VALUE)
        m_prev, l_prev = m_sc[...], l_sc[...]  # [bq, 128], all lanes equal
        m_next = jnp.maximum(m_prev, s.max(axis=-1, keepdims=True))
        p = jnp.where(allowed, jnp.exp(s - m_next[:, :1]), 0.0)
        alpha = jnp.exp(m_prev - m_next)
        l_sc[...] = alpha * l_prev + p.sum(axis=-1, keepdims=True)
        m_sc[...] = m_next
        pv = lax.dot_general(p.astype(v.dtype), v, NN, preferred_element_type=jnp.float32)
        acc_sc[...] = alpha[:, :1] * acc_sc[...] + pv

    @pl.when(t == pl.num_programs(3) - 1)
    def _finish():
        l = l_sc[...]
        # A row that saw no key (only possible for caller-made empty rows) gets 0, and an lse so
        # large that the backward recomputes p = 0 for it.
        inv = 1.0 / jnp.where(l > 0, l, 1.0)
        o_ref[...] = (acc_sc[...] * inv[:, :1]).astype(o_ref.dtype)
        lse_ref[...] = jnp.where(l > 0, m_sc[...] + jnp.log(jnp.maximum(l, 1e-30)), -MASK_VALUE)


def _visit(start, count, row, t):
    """Block index for grid step t: clamped to the range, so idle steps refetch nothing."""
    return start[row] + jnp.minimum(t, jnp.maximum(count[row] - 1, 0))


def _query_major_maps(g: int, nq: int):
    """Index maps of the query-major grid (batch, head, query block, step): the query block stays,
    the kv block (and its segment ids) walks the query block's range; GQA: head h reads kv head
    h // g. Shared by the forward and the dQ kernels."""

    def q_map(bi, h, i, t, start, count):
        return bi, h, i, 0

    def kv_map(bi, h, i, t, start, count):
        return bi, lax.div(h, jnp.int32(g)), _visit(start, count, bi * nq + i, t), 0

    def kid_map(bi, h, i, t, start, count):
        return bi, 0, _visit(start, count, bi * nq + i, t)

    return q_map, kv_map, kid_map


def forward(q, k, v, q_seg, kv_seg, table: BlockRanges, cfg: KernelConfig):
    """Returns out [B, Hq, Sq, D] (q's dtype) and lse float32[B, Hq, Sq]."""
    b, hq, sq, d = q.shape
    g = hq // k.shape[1]
    bq, bkv = cfg.block_q, cfg.block_kv
    nq = sq // bq

    q_map, kv_map, kid_map = _query_major_maps(g, nq)

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(b, hq, nq, table.max_count),
        in_specs=[
            pl.BlockSpec((None, None, bq, d), q_map),
            pl.BlockSpec((None, None, bkv, d), kv_map),
            pl.BlockSpec((None, None, bkv, d), kv_map),
            pl.BlockSpec((None, bq, _lanes(bkv)), lambda bi, h, i, t, *_: (bi, i, 0)),
            pl.BlockSpec((None, SUBLANES, bkv), kid_map),
        ],
        out_specs=[
            pl.BlockSpec((None, None, bq, d), q_map),
            pl.BlockSpec((None, None, bq, LANES), q_map),
        ],
        scratch_shapes=[pltpu.VMEM((bq, LANES), jnp.float32), pltpu.VMEM((bq, LANES), jnp.float32),
                        pltpu.VMEM((bq, d), jnp.float32)],
    )
    out, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg, nq=nq),
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, hq, sq, LANES), jnp.float32)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=cfg.interpret,
        name="block_sparse_fwd",
    )(table.start.reshape(-1), table.count.reshape(-1), q, k, v, _sublane_ids(q_seg, bkv), _lane_ids(kv_seg))
    return out, lse[..., 0]


# ----------------------------------------------------------------------------- dQ


def _dq_kernel(start_ref, count_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, qid_ref,
               kid_ref, dq_ref, acc_sc, *, cfg: KernelConfig, nq: int):
    b, i, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    row = b * nq + i

    @pl.when(t == 0)
    def _init():
        acc_sc[...] = jnp.zeros_like(acc_sc)

    @pl.when(t < count_ref[row])
    def _step():
        j = start_ref[row] + t
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        s = lax.dot_general(q, k, NT, preferred_element_type=jnp.float32) * cfg.scale
        allowed = _mask(qid_ref[...], kid_ref[:1, :], i * cfg.block_q, j * cfg.block_kv, cfg, True)
        p = jnp.where(allowed, jnp.exp(s - lse_ref[:, :1]), 0.0)
        dp = lax.dot_general(do, v, NT, preferred_element_type=jnp.float32)
        ds = p * (dp - delta_ref[:, :1])
        acc_sc[...] += lax.dot_general(ds.astype(k.dtype), k, NN, preferred_element_type=jnp.float32)

    @pl.when(t == pl.num_programs(3) - 1)
    def _finish():
        dq_ref[...] = (acc_sc[...] * cfg.scale).astype(dq_ref.dtype)


def backward_dq(q, k, v, do, lse, delta, q_seg, kv_seg, table: BlockRanges, cfg: KernelConfig):
    """dQ [B, Hq, Sq, D]; lse, delta: float32[B, Hq, Sq]."""
    b, hq, sq, d = q.shape
    g = hq // k.shape[1]
    bq, bkv = cfg.block_q, cfg.block_kv
    nq = sq // bq

    q_map, kv_map, kid_map = _query_major_maps(g, nq)

    def col(x):  # float32[B, H, Sq] -> [B, H, Sq, 128], one value per sublane row
        return jnp.broadcast_to(x[..., None], (*x.shape, LANES))

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(b, hq, nq, table.max_count),
        in_specs=[
            pl.BlockSpec((None, None, bq, d), q_map),
            pl.BlockSpec((None, None, bkv, d), kv_map),
            pl.BlockSpec((None, None, bkv, d), kv_map),
            pl.BlockSpec((None, None, bq, d), q_map),
            pl.BlockSpec((None, None, bq, LANES), q_map),
            pl.BlockSpec((None, None, bq, LANES), q_map),
            pl.BlockSpec((None, bq, _lanes(bkv)), lambda bi, h, i, t, *_: (bi, i, 0)),
            pl.BlockSpec((None, SUBLANES, bkv), kid_map),
        ],
        out_specs=pl.BlockSpec((None, None, bq, d), q_map),
        scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)],
    )
    return pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, nq=nq),
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
        interpret=cfg.interpret,
        name="block_sparse_dq",
    )(table.start.reshape(-1), table.count.reshape(-1), q, k, v, do, col(lse), col(delta),
      _sublane_ids(q_seg, bkv), _lane_ids(kv_seg))


# ----------------------------------------------------------------------------- dK / dV


def _dkv_kernel(start_ref, count_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, kid_ref,
                qid_ref, dk_ref, dv_ref, dk_sc, dv_sc, *, cfg: KernelConfig, nk: int):
    # Scores are computed transposed, sT = k q^T [bkv, bq]: keys down the sublanes, so dV = pT dO
    # and dK = dsT q are plain NN matmuls (no in-kernel transpose).
    b, j, gi, t = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
    row = b * nk + j
    first = (gi == 0) & (t == 0)
    last = (gi == pl.num_programs(3) - 1) & (t == pl.num_programs(4) - 1)

    @pl.when(first)
    def _init():
        dk_sc[...] = jnp.zeros_like(dk_sc)
        dv_sc[...] = jnp.zeros_like(dv_sc)

    @pl.when(t < count_ref[row])
    def _step():
        i = start_ref[row] + t
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        s_t = lax.dot_general(k, q, NT, preferred_element_type=jnp.float32) * cfg.scale
        allowed = _mask(kid_ref[...], qid_ref[:1, :], j * cfg.block_kv, i * cfg.block_q, cfg, False)
        p_t = jnp.where(allowed, jnp.exp(s_t - lse_ref[:1, :]), 0.0)
        dv_sc[...] += lax.dot_general(p_t.astype(do.dtype), do, NN, preferred_element_type=jnp.float32)
        dp_t = lax.dot_general(v, do, NT, preferred_element_type=jnp.float32)
        ds_t = p_t * (dp_t - delta_ref[:1, :])
        dk_sc[...] += lax.dot_general(ds_t.astype(q.dtype), q, NN, preferred_element_type=jnp.float32)

    @pl.when(last)
    def _finish():
        dk_ref[...] = (dk_sc[...] * cfg.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def backward_dkv(q, k, v, do, lse, delta, q_seg, kv_seg, table: BlockRanges, cfg: KernelConfig):
    """dK, dV [B, Hkv, Skv, D]; ``table`` gives per key block the query blocks to visit.

    Grid (B, Hkv, nk, group, max_count): the group's query heads and their query blocks are the
    two innermost ("arbitrary") axes, so one kv head's gradient is summed in VMEM, never in HBM.
    """
    b, hq, _, d = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    g = hq // hkv
    bq, bkv = cfg.block_q, cfg.block_kv
    nk = skv // bkv

    def q_map(bi, h, j, gi, t, start, count):
        return bi, h * g + gi, _visit(start, count, bi * nk + j, t), 0

    def qrow_map(bi, h, j, gi, t, start, count):  # [B, Hq, 8, Sq] per-query rows
        return bi, h * g + gi, 0, _visit(start, count, bi * nk + j, t)

    def qid_map(bi, h, j, gi, t, start, count):
        return bi, 0, _visit(start, count, bi * nk + j, t)

    def kv_map(bi, h, j, gi, t, start, count):
        return bi, h, j, 0

    def row(x):  # float32[B, H, Sq] -> [B, H, 8, Sq], one value per lane column
        return jnp.broadcast_to(x[:, :, None, :], (x.shape[0], x.shape[1], SUBLANES, x.shape[2]))

    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(b, hkv, nk, g, table.max_count),
        in_specs=[
            pl.BlockSpec((None, None, bq, d), q_map),
            pl.BlockSpec((None, None, bkv, d), kv_map),
            pl.BlockSpec((None, None, bkv, d), kv_map),
            pl.BlockSpec((None, None, bq, d), q_map),
            pl.BlockSpec((None, None, SUBLANES, bq), qrow_map),
            pl.BlockSpec((None, None, SUBLANES, bq), qrow_map),
            pl.BlockSpec((None, bkv, _lanes(bq)), lambda bi, h, j, *_: (bi, j, 0)),
            pl.BlockSpec((None, SUBLANES, bq), qid_map),
        ],
        out_specs=[pl.BlockSpec((None, None, bkv, d), kv_map),
                   pl.BlockSpec((None, None, bkv, d), kv_map)],
        scratch_shapes=[pltpu.VMEM((bkv, d), jnp.float32), pltpu.VMEM((bkv, d), jnp.float32)],
    )
    return pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, nk=nk),
        grid_spec=grid_spec,
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
        interpret=cfg.interpret,
        name="block_sparse_dkv",
    )(table.start.reshape(-1), table.count.reshape(-1), q, k, v, do, row(lse), row(delta),
      _sublane_ids(kv_seg, bq), _lane_ids(q_seg))
