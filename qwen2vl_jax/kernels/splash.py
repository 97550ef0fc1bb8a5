"""JAX's TPU splash attention behind our signature, run per device through ``shard_map``.

Splash takes unbatched ``[heads, len, d]`` arrays, a static mask (full or causal) and dynamic
``SegmentIds``; it has no scale argument (q is pre-scaled) and divides by zero on a query row
that sees no key (padding therefore copies a real segment id, see ``common.pad_sequences``).
Its block skipping comes from the static mask only: segment ids are applied inside each block,
so a packed stream still costs (stream length)^2 -- the reason ``block_sparse`` exists.

Call it per device: ``ops.attention`` wraps it in ``kernels.mesh.run_sharded`` (``shard_map``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from qwen2vl_jax.kernels.common import pad_head_dim, pad_sequences, round_up


def _kernel(heads: int, sq: int, skv: int, causal: bool, offset: int, block_q: int, block_kv: int,
            interpret: bool):
    shape = (sq, skv)
    mask = splash.CausalMask(shape, offset=offset) if causal else splash.FullMask(shape)
    sizes = splash.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
                              block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv,
                              block_q_dq=block_q, block_kv_dq=block_kv)
    # Built inside each trace (its block tables become constants of that trace; caching the
    # kernel across traces would leak tracers). The numpy mask processing is cached by splash.
    return splash.make_splash_mha(splash.MultiHeadMask([mask] * heads), block_sizes=sizes,
                                  head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q, k, v, q_segment_ids, kv_segment_ids, *, causal: bool, scale: float,
                     block_q: int = 512, block_kv: int = 512, interpret: bool = False):
    """q: [B, Sq, Hq, D]; k, v: [B, Skv, Hkv, D]; ids int32[B, S]. Returns [B, Sq, Hq, D]."""
    _, sq, hq, d = q.shape
    skv = k.shape[1]
    # Blocks no longer than the (128-rounded) sequence; kv blocks must be multiples of 128 lanes.
    bq = min(block_q, round_up(sq, 128))
    bkv = min(block_kv, round_up(skv, 128))
    # Splash has no scale argument: scale q in fp32, round once to q's dtype.
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    q, k, v, qs, ks = pad_sequences(q, k, v, q_segment_ids.astype(jnp.int32),
                                    kv_segment_ids.astype(jnp.int32), bq, bkv)
    q, k, v = (jnp.swapaxes(pad_head_dim(x, 128), 1, 2) for x in (q, k, v))  # [B, H, S, D]
    offset = skv - sq
    kernel = _kernel(hq, q.shape[2], k.shape[2], causal, offset, bq, bkv, interpret)

    def one(q, k, v, qs, ks):
        return kernel(q, k, v, segment_ids=splash.SegmentIds(q=qs, kv=ks))

    out = jax.vmap(one)(q, k, v, qs, ks)
    return jnp.swapaxes(out, 1, 2)[:, :sq, :, :d]
