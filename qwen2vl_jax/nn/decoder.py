"""Qwen2 text decoder with M-RoPE (transformers ``Qwen2VLTextModel``): RMSNorm, GQA with q/k/v
bias, SwiGLU, stacked layers run with a scan.

One code path serves training, a full forward, prefill and decode: without a cache a layer
attends within its chunk (causal, same segment); with a ``KVCache`` it writes its post-rotary
keys/values at the cache's slot and a decode step attends to every valid slot. A new layer type
or position scheme is written here once and generation gets it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen2vl_jax.config import RuntimeConfig, TextConfig
from qwen2vl_jax.generation.cache import KVCache
from qwen2vl_jax.nn.norms import RMSNorm
from qwen2vl_jax.nn.params import dense, make_param, normal_init, zeros_init
from qwen2vl_jax.nn.remat import ATTENTION_OUT, KEY, QUERY, VALUE, tag
from qwen2vl_jax.nn.stacked import create_stacked, scan_layers
from qwen2vl_jax.ops.attention import attention
from qwen2vl_jax.ops.rope import apply_rotary
from qwen2vl_jax.sharding.rules import constrain, kv_head_replication

HIDDEN = ("batch", "sequence", "act_embed")


class DecoderLayer(nnx.Module):
    def __init__(self, t: TextConfig, runtime: RuntimeConfig, *, rngs: nnx.Rngs):
        pd = runtime.param_dtype
        d, h, kv, hd, i = t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim, t.intermediate_size
        self.dtype = jnp.dtype(runtime.dtype)
        self.attention_impl = runtime.text_attention_impl
        self.num_kv_heads = kv
        self.input_norm = RMSNorm(d, t.rms_norm_eps, "embed", param_dtype=pd, rngs=rngs)
        self.post_attention_norm = RMSNorm(d, t.rms_norm_eps, "embed", param_dtype=pd, rngs=rngs)
        self.q_kernel = make_param(rngs, normal_init, (d, h, hd), ("embed", "heads", "head_dim"), pd)
        self.q_bias = make_param(rngs, zeros_init, (h, hd), ("heads", "head_dim"), pd)
        self.k_kernel = make_param(rngs, normal_init, (d, kv, hd), ("embed", "kv_heads", "head_dim"), pd)
        self.k_bias = make_param(rngs, zeros_init, (kv, hd), ("kv_heads", "head_dim"), pd)
        self.v_kernel = make_param(rngs, normal_init, (d, kv, hd), ("embed", "kv_heads", "head_dim"), pd)
        self.v_bias = make_param(rngs, zeros_init, (kv, hd), ("kv_heads", "head_dim"), pd)
        self.o_kernel = make_param(rngs, normal_init, (h, hd, d), ("heads", "head_dim", "embed"), pd)
        self.gate_kernel = make_param(rngs, normal_init, (d, i), ("embed", "mlp"), pd)
        self.up_kernel = make_param(rngs, normal_init, (d, i), ("embed", "mlp"), pd)
        self.down_kernel = make_param(rngs, normal_init, (i, d), ("mlp", "embed"), pd)

    def kv_projections(self):
        """k/v kernels and biases, each kv head repeated when ``tensor`` exceeds the kv heads
        (sharding/rules.py): every tensor shard then computes and caches only its own kv head."""
        weights = [self.k_kernel[...], self.k_bias[...], self.v_kernel[...], self.v_bias[...]]
        r = kv_head_replication(self.num_kv_heads)
        if r == 1:
            return weights
        return [jnp.repeat(w, r, axis=w.ndim - 2) for w in weights]

    def project_qkv(self, x: jax.Array, cos: jax.Array, sin: jax.Array):
        """x: [B, S, D] -> rotated q [B, S, H, hd], rotated k and v [B, S, KV', hd] (KV' = KV
        times the kv-head replication of the mesh in context, 1 without one)."""
        dt = self.dtype
        h = self.input_norm(x)
        heads = ("batch", "sequence", "act_heads", "head_dim")
        kv_heads = ("batch", "sequence", "act_kv_heads", "head_dim")
        k_kernel, k_bias, v_kernel, v_bias = self.kv_projections()
        q = constrain(dense(h, self.q_kernel[...], self.q_bias[...], "bsd,dhk->bshk", dt), heads)
        k = constrain(dense(h, k_kernel, k_bias, "bsd,dhk->bshk", dt), kv_heads)
        v = constrain(dense(h, v_kernel, v_bias, "bsd,dhk->bshk", dt), kv_heads)
        # Text rotary runs in the activation dtype, not upcast (transformers'
        # apply_multimodal_rotary_pos_emb multiplies bf16 q by bf16 cos); see docs/numerics.md.
        c, s = cos[:, :, None, :], sin[:, :, None, :]
        return tag(apply_rotary(q, c, s), QUERY), tag(apply_rotary(k, c, s), KEY), tag(v, VALUE)

    def mlp(self, x: jax.Array) -> jax.Array:
        """The SwiGLU MLP block with its residual."""
        dt = self.dtype
        with jax.named_scope("mlp"):
            h = self.post_attention_norm(x)
            mlp = ("batch", "sequence", "act_mlp")
            gate = constrain(dense(h, self.gate_kernel[...], None, "bsd,dm->bsm", dt), mlp)
            up = constrain(dense(h, self.up_kernel[...], None, "bsd,dm->bsm", dt), mlp)
            y = dense(jax.nn.silu(gate) * up, self.down_kernel[...], None, "bsm,md->bsd", dt)
            return constrain(x + y, HIDDEN)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array,
                 cache: KVCache | None = None, layer: jax.Array | None = None
                 ) -> tuple[jax.Array, KVCache | None]:
        """x: [B, S, D]; cos/sin: [B, S, head_dim] in the compute dtype; segment_ids: int32[B, S].
        With ``cache``, this is layer number ``layer`` of the stack: its keys/values are stored."""
        with jax.named_scope("attention"):
            q, k, v = self.project_qkv(x, cos, sin)
            if cache is not None:
                cache = cache.write(layer, k, v)
            if cache is None or cache.fresh:  # the chunk attends to itself (causal, same segment)
                o = attention(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                              causal=True, impl=self.attention_impl)
            elif self.attention_impl in ("auto", "xla", "xla_blocked"):  # the live window only
                o = cache.attend(layer, q, segment_ids)
            else:  # new tokens attend to every valid slot (unwritten slots have segment 0)
                keys, values = cache.read(layer)
                o = attention(q, keys, values, q_segment_ids=segment_ids, kv_segment_ids=cache.segment_ids,
                              causal=False, impl=self.attention_impl)
            o = tag(o, ATTENTION_OUT)
            x = constrain(x + dense(o, self.o_kernel[...], None, "bshk,hkd->bsd", self.dtype), HIDDEN)
        return self.mlp(x), cache


class Decoder(nnx.Module):
    """Stacked decoder layers + final RMSNorm (embeddings and lm_head live in model.py)."""

    def __init__(self, t: TextConfig, runtime: RuntimeConfig, *, rngs: nnx.Rngs):
        self.num_layers = t.num_hidden_layers
        self.remat = runtime.text_remat
        self.layers = create_stacked(lambda r: DecoderLayer(t, runtime, rngs=r), t.num_hidden_layers, rngs)
        self.norm = RMSNorm(t.hidden_size, t.rms_norm_eps, "embed", param_dtype=runtime.param_dtype, rngs=rngs)

    def __call__(self, x, cos, sin, segment_ids, *, cache: KVCache | None = None, collect: bool = False):
        """Returns (normed final hidden [B, S, D], per-layer outputs [L, B, S, D] if ``collect``
        else None, the updated cache or None)."""
        x = constrain(x, HIDDEN)
        if cache is None:
            def run(layer, h, _):
                h, _ = layer(h, cos, sin, segment_ids)
                return h, (h if collect else None)

            x, per_layer = scan_layers(self.layers, run, x, remat=self.remat)
            return self.norm(x), per_layer, None

        def run_cached(layer, carry, index):
            h, c = layer(carry[0], cos, sin, segment_ids, carry[1], index)
            return (h, c), (h if collect else None)

        cache = cache.with_chunk_segments(segment_ids)
        (x, cache), per_layer = scan_layers(self.layers, run_cached, (x, cache),
                                            jnp.arange(self.num_layers), remat=self.remat)
        return self.norm(x), per_layer, cache.advance(x.shape[1])
