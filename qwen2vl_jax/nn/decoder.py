"""Qwen2 text decoder with M-RoPE (spec §3): RMSNorm, GQA with q/k/v bias, SwiGLU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen2vl_jax.config import ModelConfig
from qwen2vl_jax.nn.norms import RMSNorm
from qwen2vl_jax.nn.params import dense, make_param, normal_init, zeros_init
from qwen2vl_jax.nn.stacked import create_stacked, scan_layers
from qwen2vl_jax.ops.attention import attention
from qwen2vl_jax.ops.rope import apply_rotary


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        t = cfg.text
        pd = cfg.param_dtype
        d, h, kv, hd, i = t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim, t.intermediate_size
        self.cfg = cfg
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

    def project_qkv(self, x: jax.Array, cos: jax.Array, sin: jax.Array):
        """x: [B, S, D] -> rotated q [B, S, H, hd], rotated k and v [B, S, KV, hd]."""
        dt = jnp.dtype(self.cfg.dtype)
        h = self.input_norm(x)
        q = dense(h, self.q_kernel[...], self.q_bias[...], "bsd,dhk->bshk", dt)
        k = dense(h, self.k_kernel[...], self.k_bias[...], "bsd,dhk->bshk", dt)
        v = dense(h, self.v_kernel[...], self.v_bias[...], "bsd,dhk->bshk", dt)
        # Text rotary runs in the activation dtype (not upcast), spec §3.2 / §10.1. The KV cache
        # stores post-rotary keys, as the reference does (spec §6).
        c, s = cos[:, :, None, :], sin[:, :, None, :]
        return apply_rotary(q, c, s), apply_rotary(k, c, s), v

    def finish(self, x: jax.Array, attn_out: jax.Array) -> jax.Array:
        """Residual after attention, then the SwiGLU MLP block."""
        dt = jnp.dtype(self.cfg.dtype)
        x = x + dense(attn_out, self.o_kernel[...], None, "bshk,hkd->bsd", dt)
        with jax.named_scope("mlp"):
            h = self.post_attention_norm(x)
            gate = dense(h, self.gate_kernel[...], None, "bsd,dm->bsm", dt)
            up = dense(h, self.up_kernel[...], None, "bsd,dm->bsm", dt)
            return x + dense(jax.nn.silu(gate) * up, self.down_kernel[...], None, "bsm,md->bsd", dt)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """x: [B, S, D]; cos/sin: [B, S, head_dim] in the compute dtype; segment_ids: int32[B, S]."""
        with jax.named_scope("attention"):
            q, k, v = self.project_qkv(x, cos, sin)
            o = attention(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                          causal=True, impl=self.cfg.text_attention_impl)
        return self.finish(x, o)


class Decoder(nnx.Module):
    """Stacked decoder layers + final RMSNorm (embeddings and lm_head live in model.py)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.layers = create_stacked(lambda r: DecoderLayer(cfg, rngs=r), cfg.text.num_hidden_layers, rngs)
        self.norm = RMSNorm(cfg.text.hidden_size, cfg.text.rms_norm_eps, "embed",
                            param_dtype=cfg.param_dtype, rngs=rngs)

    def __call__(self, x, cos, sin, segment_ids, *, collect: bool = False):
        """Returns (normed final hidden [B, S, D], per-layer outputs [L, B, S, D] or None)."""
        x, per_layer = scan_layers(self.layers, x, cos, sin, segment_ids,
                                   remat=self.cfg.remat, collect=collect)
        return self.norm(x), per_layer
