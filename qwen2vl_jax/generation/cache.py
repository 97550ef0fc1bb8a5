"""The static KV cache of the text decoder: post-rotary keys and values of every layer.

Shapes are fixed at creation (``[layers, batch, slots, kv_heads, head_dim]``), so prefill and
every decode step compile once per bucket. The cache stores keys *after* M-RoPE, as
transformers' ``DynamicCache`` does (rotary is applied before the cache update in
``Qwen2VLAttention.forward``), so a decode step never re-rotates old keys.

``segment_ids[b, t]`` says which slots hold a real token (the prompt's segment ids where it was
written, 1 for generated tokens, 0 for left padding and empty slots): a query attends exactly
to the slots with its segment. ``fresh`` (static) marks a cache with nothing written yet: the
prompt chunk then attends to itself (causally) instead of to the whole cache, which is the
same function at a fraction of the cost.

A chunk that is not fresh (a decode step) attends through ``attend``: only the cache's live
window, the key blocks from the first slot any row can see to the last written one, read with
one slice of the stacked arrays (no copy of a layer's whole cache) whose width is the narrowest
of a static ladder (``ops.blocked_attention.width_ladder``), chosen on device by ``lax.switch``.
The cache arrays are loop carries updated in place (``dynamic_update_slice`` on a donated
buffer); a new kind of per-layer state (e.g. a recurrent layer's) is one more field here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from qwen2vl_jax.config import TextConfig
from qwen2vl_jax.sharding.rules import constrain, kv_head_replication

# [layers, batch, slots, kv_heads, head_dim]: sharded over batch and kv heads (sharding/rules.py).
CACHE_AXES = ("layers", "batch", "cache_slots", "act_kv_heads", "head_dim")


def cache_length(prompt_len: int, max_new_tokens: int, multiple: int) -> int:
    """Slots for a prompt bucket plus the new tokens, rounded up to ``multiple`` (one compiled
    program serves every max_new_tokens in the same multiple)."""
    need = prompt_len + max_new_tokens
    return -(-need // multiple) * multiple


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    keys: jax.Array  # [L, B, T, KV, hd], compute dtype
    values: jax.Array  # [L, B, T, KV, hd]
    segment_ids: jax.Array  # int32[B, T]
    index: jax.Array  # int32[]: the slot the next chunk is written at
    fresh: bool = dataclasses.field(default=True, metadata={"static": True})

    @classmethod
    def create(cls, text: TextConfig, batch: int, length: int, dtype: jnp.dtype) -> KVCache:
        """An empty cache; under a mesh its kv heads are those of the decoder's (possibly
        repeated) k/v projections."""
        kv = text.num_key_value_heads * kv_head_replication(text.num_key_value_heads)
        shape = (text.num_hidden_layers, batch, length, kv, text.head_dim)
        keys, values = (constrain(jnp.zeros(shape, dtype), CACHE_AXES) for _ in range(2))
        return cls(keys, values, constrain(jnp.zeros((batch, length), jnp.int32), ("batch", "cache_slots")),
                   jnp.int32(0), fresh=True)

    @property
    def length(self) -> int:
        return self.keys.shape[2]

    def with_chunk_segments(self, segment_ids: jax.Array) -> KVCache:
        """Record the segment ids of the chunk about to be written at ``index`` ([B, s])."""
        seg = jax.lax.dynamic_update_slice(self.segment_ids, segment_ids.astype(jnp.int32), (0, self.index))
        return dataclasses.replace(self, segment_ids=seg)

    def write(self, layer: jax.Array, k: jax.Array, v: jax.Array) -> KVCache:
        """Store one layer's chunk of keys/values ([B, s, KV, hd]) at slot ``index``, in place."""
        start = (layer, 0, self.index, 0, 0)
        keys = jax.lax.dynamic_update_slice(self.keys, k[None].astype(self.keys.dtype), start)
        values = jax.lax.dynamic_update_slice(self.values, v[None].astype(self.values.dtype), start)
        return dataclasses.replace(self, keys=keys, values=values)

    def read(self, layer: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One layer's keys and values over all slots: [B, T, KV, hd] each."""
        return (jax.lax.dynamic_index_in_dim(self.keys, layer, keepdims=False),
                jax.lax.dynamic_index_in_dim(self.values, layer, keepdims=False))

    def attend(self, layer: jax.Array, q: jax.Array, q_segment_ids: jax.Array,
               scale: float | None = None) -> jax.Array:
        """q [B, s, H, hd] (already written at ``index``) over the live slots of ``layer``,
        non-causal by segment (unwritten slots have segment 0): [B, s, H, hd]."""
        from qwen2vl_jax.kernels.block_table import live_blocks
        from qwen2vl_jax.ops.attention import attention
        from qwen2vl_jax.ops.blocked_attention import window_block, window_of

        b, s = q_segment_ids.shape
        kb = window_block(self.length)
        if kb is None or kb == self.length or s > 128:
            keys, values = self.read(layer)
            return attention(q, keys, values, q_segment_ids=q_segment_ids, kv_segment_ids=self.segment_ids,
                             causal=False, impl="xla", scale=scale)
        # One window for all rows: the union of the key blocks each row's queries can meet.
        live = live_blocks(q_segment_ids, self.segment_ids, s, kb, causal=False).any(axis=(0, 1))
        n = live.shape[0]
        first = jnp.argmax(live)
        count = jnp.where(live.any(), n - jnp.argmax(live[::-1]) - first, 1)
        idx, start, widths = window_of(first, count, n)

        def branch(w):
            def run(start):
                at, size = (layer, 0, start * kb, 0, 0), (1, b, w * kb) + self.keys.shape[3:]
                keys = jax.lax.dynamic_slice(self.keys, at, size)[0]
                values = jax.lax.dynamic_slice(self.values, at, size)[0]
                seg = jax.lax.dynamic_slice(self.segment_ids, (0, start * kb), (b, w * kb))
                return attention(q, keys, values, q_segment_ids=q_segment_ids, kv_segment_ids=seg,
                                 causal=False, impl="xla", scale=scale)
            return run

        return jax.lax.switch(idx, [branch(w) for w in widths], start)

    def advance(self, steps: int) -> KVCache:
        """After a chunk of ``steps`` tokens went through every layer."""
        return dataclasses.replace(self, index=self.index + steps, fresh=False)
