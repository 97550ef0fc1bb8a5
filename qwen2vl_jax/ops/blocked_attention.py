"""``xla_blocked`` attention: block-sparse flash attention written as XLA loops.

Sequences are cut into blocks of ``BLOCK`` positions. The block table of ``kernels.block_table``
gives every query block a contiguous range of key blocks that can hold an unmasked score (exact
for non-decreasing segment ids, as in the packed ViT stream; a superset for arbitrary ids, which
stays exact because the element-wise mask is applied inside every visited block). The loops
run in lockstep: trip t computes one [BLOCK, BLOCK] tile for every query block (key block in the
dK/dV pass), so a trip's memory is O(S * BLOCK) per head and no array in the forward or the
backward has an [S, S] extent. Work is n_blocks * max_count tiles: about the sum of squared
segment lengths when segments are of similar length (the packed ViT stream), but as much as
dense when one block's range is long (one causal segment; a block that mixes real ids with the
padding id 0 sees every key block before it).

Forward (FlashAttention-2, Dao 2023, arXiv 2307.08691, Algorithm 1): a ``lax.fori_loop`` over
the trip count ``max_count``; trip t processes, for all query blocks i at once, key block
``start_i + t`` (masked when ``t >= count_i``) with an online softmax in fp32. It returns the
output and the per-row logsumexp ``lse = m + log(l)`` (fp32), the backward's residuals.

Backward (ibid., Algorithm 2), two loops over the same table, each recomputing
``P = exp(S - lse)`` per visited block, with ``D = rowsum(dO * O)``:
  * dQ, query-major over ``kv_ranges``: ``dS = P * (dO V^T - D)``, ``dQ += dS K * scale``;
  * dK/dV, key-major over the transposed table ``q_ranges`` (per key block, the query blocks
    that can see it): ``dV += P^T dO``, ``dK += dS^T Q * scale``. GQA: kv head h serves query
    heads h * G .. h * G + G - 1, and the contraction runs over those G heads too.
The key-major pass recomputes S and dO V^T once more (7 block matmuls instead of 5), and buys
determinism with it: every key block's dK/dV is a loop carry written by exactly one lane of the
loop, whereas a single query-major pass needs a scatter-add into dK/dV in which several query
blocks of one segment hit the same key block in the same trip (GPU scatters do that with
floating-point atomics, whose order, and so whose rounding, varies from run to run). It is also
the schedule of the Pallas kernels in ``kernels/``.

Rows that see no key (a query whose segment has no key): output 0, lse 0, P 0, zero gradients.
Softmax statistics, P, dS and the accumulators are fp32; for bf16 inputs P and dS are rounded to
bf16 as the operands of the backward's matmuls (as in FlashAttention-2), accumulation in fp32.

Shapes covered (``covers``): Sq and Skv multiples of BLOCK and Skv > BLOCK (one key block has
nothing to skip); causal additionally needs Sq == Skv (query i is at key position i). The
dispatcher in ``ops.attention`` sends every other shape to the dense ``xla`` path.

Windowed forward (``windowed_attention``, the CPU forward when nothing is differentiated): the
lockstep loop above makes every query block pay for the longest range, and its per-trip gathers
and full-width elementwise passes cost more than the tiles on a CPU. Instead, each query chunk
(128 or 64 rows, all heads of a kv group folded into the rows) runs ONE dense masked softmax over
a contiguous window of key blocks that covers its range: the window's width is the smallest
entry >= the range of a static ladder (1, 2, 3, 4, 6, 9, ... blocks: at most 1.5x the range),
picked on device by ``lax.switch``, and its start is the range's first block. Chunks run one
after the other (``lax.map``), so each one's working set stays in cache. A chunk of padding in a
segment of its own pays one block; a causal row pays ~half the dense square. ``windowed_rule``
wraps it in a ``custom_vjp`` whose forward and backward under differentiation are another
implementation's (this file's lockstep pair, or dense ``xla``): gradients and training numerics
stay those of that implementation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from qwen2vl_jax.kernels.block_table import kv_ranges, q_ranges

BLOCK = 128  # query and key block of xla_blocked
_F32 = jnp.float32


def covers(s_q: int, s_kv: int, causal: bool) -> bool:
    """Whether ``blocked_attention`` handles these lengths (else the caller uses dense xla)."""
    fits = s_q % BLOCK == 0 and s_kv % BLOCK == 0 and s_kv > BLOCK
    return fits and (not causal or s_q == s_kv)


def blocked_attention(q, k, v, q_seg, kv_seg, scale: float, causal: bool):
    """q: [B, Sq, Hq, D]; k, v: [B, Skv, Hkv, D]; ids int32[B, Sq] / [B, Skv]. Returns q's shape/dtype."""
    return _blocked_attention(q, k, v, q_seg, kv_seg, scale, causal)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _blocked_attention(q, k, v, q_seg, kv_seg, scale, causal):
    return _blocked_forward(q, k, v, q_seg, kv_seg, scale, causal)[0]


def _blocked_fwd(q, k, v, q_seg, kv_seg, scale, causal):
    out, lse = _blocked_forward(q, k, v, q_seg, kv_seg, scale, causal)
    return out, (q, k, v, q_seg, kv_seg, out, lse)


def _blocked_bwd(scale, causal, res, g):
    q, k, v, q_seg, kv_seg, out, lse = res
    hkv = k.shape[2]
    gq = q.shape[2] // hkv
    # D_i = rowsum(dO_i * O_i) in fp32, in the layout of lse: [b, nq, hkv, G, BLOCK].
    delta = _row_layout((g.astype(_F32) * out.astype(_F32)).sum(-1), hkv, gq)
    dq = _blocked_dq(q, k, v, g, q_seg, kv_seg, lse, delta, scale, causal)
    dk, dv = _blocked_dkv(q, k, v, g, q_seg, kv_seg, lse, delta, scale, causal)
    return dq, dk, dv, None, None


_blocked_attention.defvjp(_blocked_fwd, _blocked_bwd)


def _row_layout(x, hkv, gq):
    """[b, S, Hq] -> [b, S // BLOCK, hkv, G, BLOCK]: per-row statistics as the loops hold them."""
    b, s, _ = x.shape
    return jnp.moveaxis(x.reshape(b, s // BLOCK, BLOCK, hkv, gq), 2, -1)


def _take(x, idx):
    """x[b, idx[b, n], ...] for idx int32[b, n]: the blocks one trip visits."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _valid(q_ids, k_ids, live, q_blk, k_blk, causal):
    """bool[b, n, 1, 1, BLOCK, BLOCK]: segment (and causal) mask of one visited block pair.

    q_ids, k_ids: [b, n, BLOCK] ids of the pair's blocks; live: bool[b, n] (trip within range);
    q_blk, k_blk: int[b, n] block indices (positions for the causal mask).
    """
    valid = (q_ids[:, :, :, None] == k_ids[:, :, None, :]) & live[:, :, None, None]
    if causal:
        pos = jnp.arange(BLOCK)
        q_pos = q_blk[:, :, None, None] * BLOCK + pos[:, None]
        k_pos = k_blk[:, :, None, None] * BLOCK + pos[None, :]
        valid = valid & (q_pos >= k_pos)
    return valid[:, :, None, None]


def _blocked_forward(q, k, v, q_seg, kv_seg, scale, causal):
    """Online-softmax attention over the key blocks each query block can meet.

    Key block j is visited by query block i iff it lies in i's range from ``kernels.block_table``
    (tight for non-decreasing ids, a superset otherwise). The loop runs max_i(span_i) times over
    all query blocks at once (fixed shapes; trip count on device). Returns (out in q's dtype,
    lse fp32 [b, nq, hkv, G, BLOCK], 0 for rows that see no key).
    """
    b, s, hq, d = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    nq, nk = s // BLOCK, k.shape[1] // BLOCK
    qb = q.reshape(b, nq, BLOCK, hkv, g, d)
    kb = k.reshape(b, nk, BLOCK, hkv, d)
    vb = v.reshape(b, nk, BLOCK, hkv, d)
    qs = q_seg.reshape(b, nq, BLOCK)
    ks = kv_seg.reshape(b, nk, BLOCK)
    table = kv_ranges(q_seg, kv_seg, BLOCK, BLOCK, causal=causal)
    first, span, trips = table.start, table.count, table.max_count
    q_blk = jnp.broadcast_to(jnp.arange(nq), (b, nq))

    def body(t, carry):
        m, l, acc = carry  # m, l: [b, nq, hkv, g, BLOCK]; acc: [b, nq, BLOCK, hkv, g, d]
        j = jnp.clip(first + t, 0, nk - 1)
        kj, vj, sj = _take(kb, j), _take(vb, j), _take(ks, j)
        scores = jnp.einsum("bnqhgd,bnkhd->bnhgqk", qb, kj, preferred_element_type=_F32) * scale
        valid = _valid(qs, sj, t < span, q_blk, j, causal)
        scores = jnp.where(valid, scores, -jnp.inf)
        m_new = jnp.maximum(m, scores.max(-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.where(valid, jnp.exp(scores - m_safe[..., None]), 0.0)
        alpha = jnp.where(jnp.isfinite(m), jnp.exp(m - m_safe), 0.0)
        l = l * alpha + p.sum(-1)
        # p stays fp32 (unnormalised, so rounding it to bf16 would cost more than the dense
        # path's rounding of normalised probabilities).
        pv = jnp.einsum("bnhgqk,bnkhd->bnqhgd", p, vj.astype(_F32), preferred_element_type=_F32)
        acc = acc * jnp.moveaxis(alpha, -1, 2)[..., None] + pv
        return m_new, l, acc

    init = (jnp.full((b, nq, hkv, g, BLOCK), -jnp.inf, _F32),
            jnp.zeros((b, nq, hkv, g, BLOCK), _F32),
            jnp.zeros((b, nq, BLOCK, hkv, g, d), _F32))
    m, l, acc = jax.lax.fori_loop(0, trips, body, init)
    lse = jnp.where(l > 0, m + jnp.log(jnp.where(l > 0, l, 1.0)), 0.0)
    l = jnp.moveaxis(l, -1, 2)[..., None]
    out = acc / jnp.where(l > 0, l, 1.0)  # a query with no key at all gets 0 (never in the ViT)
    return out.astype(q.dtype).reshape(b, s, hq, d), lse


def _probs(scores, valid, lse):
    """P = exp(S - lse) on the valid entries, 0 elsewhere (fp32)."""
    return jnp.where(valid, jnp.exp(scores - lse[..., None]), 0.0)


def _blocked_dq(q, k, v, do, q_seg, kv_seg, lse, delta, scale, causal):
    """dQ, query-major over the forward's table: dQ_i = scale * sum_j dS_ij K_j."""
    b, s, hq, d = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    nq, nk = s // BLOCK, k.shape[1] // BLOCK
    qb = q.reshape(b, nq, BLOCK, hkv, g, d)
    dob = do.reshape(b, nq, BLOCK, hkv, g, d)
    kb = k.reshape(b, nk, BLOCK, hkv, d)
    vb = v.reshape(b, nk, BLOCK, hkv, d)
    qs = q_seg.reshape(b, nq, BLOCK)
    ks = kv_seg.reshape(b, nk, BLOCK)
    table = kv_ranges(q_seg, kv_seg, BLOCK, BLOCK, causal=causal)
    first, span = table.start, table.count
    q_blk = jnp.broadcast_to(jnp.arange(nq), (b, nq))

    def body(t, dq):  # dq: [b, nq, BLOCK, hkv, g, d] fp32
        j = jnp.clip(first + t, 0, nk - 1)
        kj, vj, sj = _take(kb, j), _take(vb, j), _take(ks, j)
        valid = _valid(qs, sj, t < span, q_blk, j, causal)
        scores = jnp.einsum("bnqhgd,bnkhd->bnhgqk", qb, kj, preferred_element_type=_F32) * scale
        p = _probs(scores, valid, lse)
        dp = jnp.einsum("bnqhgd,bnkhd->bnhgqk", dob, vj, preferred_element_type=_F32)
        ds = (p * (dp - delta[..., None])).astype(q.dtype)
        return dq + jnp.einsum("bnhgqk,bnkhd->bnqhgd", ds, kj, preferred_element_type=_F32)

    dq = jax.lax.fori_loop(0, table.max_count, body, jnp.zeros(qb.shape, _F32))
    return (dq * scale).astype(q.dtype).reshape(q.shape)


def _blocked_dkv(q, k, v, do, q_seg, kv_seg, lse, delta, scale, causal):
    """dK, dV, key-major over the transposed table: each key block visits the query blocks that
    can see it; dV_j = sum_i P_ij^T dO_i, dK_j = scale * sum_i dS_ij^T Q_i (summed over the G
    query heads of each kv head)."""
    b, s, hq, d = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    nq, nk = s // BLOCK, k.shape[1] // BLOCK
    qb = q.reshape(b, nq, BLOCK, hkv, g, d)
    dob = do.reshape(b, nq, BLOCK, hkv, g, d)
    kb = k.reshape(b, nk, BLOCK, hkv, d)
    vb = v.reshape(b, nk, BLOCK, hkv, d)
    qs = q_seg.reshape(b, nq, BLOCK)
    ks = kv_seg.reshape(b, nk, BLOCK)
    table = q_ranges(q_seg, kv_seg, BLOCK, BLOCK, causal=causal)
    first, span = table.start, table.count
    k_blk = jnp.broadcast_to(jnp.arange(nk), (b, nk))

    def body(t, carry):  # dk, dv: [b, nk, BLOCK, hkv, d] fp32
        dk, dv = carry
        i = jnp.clip(first + t, 0, nq - 1)
        qi, doi, si = _take(qb, i), _take(dob, i), _take(qs, i)
        lse_i, delta_i = _take(lse, i), _take(delta, i)  # [b, nk, hkv, g, BLOCK]
        valid = _valid(si, ks, t < span, i, k_blk, causal)
        scores = jnp.einsum("bnqhgd,bnkhd->bnhgqk", qi, kb, preferred_element_type=_F32) * scale
        p = _probs(scores, valid, lse_i)
        dv = dv + jnp.einsum("bnhgqk,bnqhgd->bnkhd", p.astype(do.dtype), doi, preferred_element_type=_F32)
        dp = jnp.einsum("bnqhgd,bnkhd->bnhgqk", doi, vb, preferred_element_type=_F32)
        ds = (p * (dp - delta_i[..., None])).astype(q.dtype)
        dk = dk + jnp.einsum("bnhgqk,bnqhgd->bnkhd", ds, qi, preferred_element_type=_F32)
        return dk, dv

    zeros = jnp.zeros(kb.shape, _F32)
    dk, dv = jax.lax.fori_loop(0, table.max_count, body, (zeros, zeros))
    return (dk * scale).astype(k.dtype).reshape(k.shape), dv.astype(v.dtype).reshape(v.shape)


# ---------------------------------------------------------------------------- windowed forward

WINDOW_MIN_KV = 256  # shorter key sequences: one dense tile is cheaper than the chunk loop


def window_block(n: int) -> int | None:
    """The chunk a length is cut into: BLOCK, else BLOCK // 2, else the whole length if <= BLOCK."""
    for blk in (BLOCK, BLOCK // 2):
        if n % blk == 0:
            return blk
    return n if n <= BLOCK else None


def windowed_covers(s_q: int, s_kv: int, causal: bool) -> bool:
    """Whether ``windowed_attention`` runs these lengths (causal: the queries are the last s_q keys)."""
    kb = window_block(s_kv)
    return (window_block(s_q) is not None and kb is not None and kb < s_kv and s_kv >= WINDOW_MIN_KV
            and (not causal or s_q <= s_kv))


def width_ladder(n_blocks: int) -> tuple[int, ...]:
    """Window widths in key blocks: 1, 2, 3, 4, then x1.5 (rounded up), capped by ``n_blocks``."""
    out, w = [], 1
    while w < n_blocks:
        out.append(w)
        w = w + 1 if w < 4 else -(-3 * w // 2)
    return (*out, n_blocks)


def window_of(start: jax.Array, count: jax.Array, n_blocks: int) -> tuple[jax.Array, jax.Array, tuple[int, ...]]:
    """(ladder index, clamped start block, ladder) of the narrowest window covering blocks
    ``start .. start + count - 1`` (count 0: one block)."""
    widths = width_ladder(n_blocks)
    ladder = jnp.asarray(widths, jnp.int32)
    idx = jnp.searchsorted(ladder, jnp.maximum(count, 1), side="left").astype(jnp.int32)
    return idx, jnp.minimum(start, n_blocks - ladder[idx]), widths


def masked_softmax_pv(scores, valid, v):
    """softmax(scores) @ v over the valid entries, fp32 (rows with no valid key give 0).

    scores: [..., q, k] fp32; valid: bool broadcastable to it; v: [..., k, d]."""
    scores = jnp.where(valid, scores, -jnp.inf)
    m = scores.max(-1, keepdims=True)
    p = jnp.exp(scores - jnp.where(jnp.isfinite(m), m, 0.0))
    l = p.sum(-1, keepdims=True)
    out = jnp.einsum("...qk,...kd->...qd", p, v.astype(_F32), preferred_element_type=_F32)
    return out / jnp.where(l > 0, l, 1.0)


def windowed_attention(q, k, v, q_seg, kv_seg, scale: float, causal: bool):
    """q: [B, Sq, Hq, D]; k, v: [B, Skv, Hkv, D]; ids int32[B, Sq] / [B, Skv] (see the module
    docstring). Returns q's shape and dtype; the same function as ``xla`` up to rounding."""
    q, k, v, q_seg, kv_seg = (jnp.asarray(x) for x in (q, k, v, q_seg, kv_seg))
    b, s, hq, d = q.shape
    skv, hkv = k.shape[1], k.shape[2]
    g = hq // hkv
    cq, kb = window_block(s), window_block(skv)
    nq, nk, offset = s // cq, skv // kb, skv - s
    table = kv_ranges(q_seg, kv_seg, cq, kb, causal=causal, causal_offset=offset)
    width_idx, start, widths = window_of(table.start, table.count, nk)
    # Head-major copies, once: a chunk's rows are (group member, query), keys are [Hkv, Skv, D].
    qh = q.reshape(b, nq, cq, hkv, g, d).transpose(0, 1, 3, 4, 2, 5).reshape(b, nq, hkv, g * cq, d)
    kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
    qs = q_seg.reshape(b, nq, cq)

    def branch(w):
        def run(row, i, first):
            window = (1, hkv, w * kb, d)
            kw = jax.lax.dynamic_slice(kh, (row, 0, first * kb, 0), window)[0]
            vw = jax.lax.dynamic_slice(vh, (row, 0, first * kb, 0), window)[0]
            ks = jax.lax.dynamic_slice(kv_seg, (row, first * kb), (1, w * kb))[0]
            scores = jnp.einsum("hqd,hkd->hqk", qh[row, i], kw, preferred_element_type=_F32) * scale
            valid = qs[row, i][:, None] == ks[None, :]
            if causal:
                q_pos = i * cq + jnp.arange(cq) + offset
                valid = valid & (q_pos[:, None] >= first * kb + jnp.arange(w * kb)[None, :])
            return masked_softmax_pv(scores, jnp.tile(valid, (g, 1))[None], vw)

        return run

    branches = [branch(w) for w in widths]
    rows, chunks = jnp.repeat(jnp.arange(b), nq), jnp.tile(jnp.arange(nq), b)
    out = jax.lax.map(lambda a: jax.lax.switch(a[2], branches, a[0], a[1], a[3]),
                      (rows, chunks, width_idx.reshape(-1), start.reshape(-1)))  # [b*nq, hkv, g*cq, d]
    out = out.reshape(b, nq, hkv, g, cq, d).transpose(0, 1, 4, 2, 3, 5)
    return out.reshape(b, s, hq, d).astype(q.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def windowed_rule(q, k, v, q_seg, kv_seg, scale, causal, rule):
    """``windowed_attention``, differentiated as ``rule(q, k, v, q_seg, kv_seg, scale, causal)``
    (forward and backward both: under ``jax.grad`` the values are exactly ``rule``'s)."""
    return windowed_attention(q, k, v, q_seg, kv_seg, scale, causal)


def _windowed_rule_fwd(q, k, v, q_seg, kv_seg, scale, causal, rule):
    return jax.vjp(lambda q, k, v: rule(q, k, v, q_seg, kv_seg, scale, causal), q, k, v)


def _windowed_rule_bwd(scale, causal, rule, pullback, g):
    return (*pullback(g), None, None)


windowed_rule.defvjp(_windowed_rule_fwd, _windowed_rule_bwd)
