"""Vision tower (HF ``Qwen2VisionTransformerPretrainedModel``): patch embed -> 2D-rotary ViT blocks
-> patch merger.

All images and video slices of a batch arrive as ONE packed patch stream; block-diagonal
attention comes from segment ids (one segment per temporal slice, as HF's ``cu_seqlens``), never from Python
loops over images, so the compiled program depends only on the stream length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen2vl_jax.config import RuntimeConfig, VisionConfig
from qwen2vl_jax.nn.norms import LayerNorm
from qwen2vl_jax.nn.params import dense, make_param, normal_init, zeros_init
from qwen2vl_jax.nn.remat import ATTENTION_OUT, KEY, QUERY, VALUE, tag
from qwen2vl_jax.nn.stacked import create_stacked, scan_layers
from qwen2vl_jax.ops.attention import attention
from qwen2vl_jax.ops.rope import apply_vision_rotary, vision_rotary_cos_sin
from qwen2vl_jax.sharding.rules import constrain

STREAM = ("patches", "act_embed")


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


class VisionBlock(nnx.Module):
    """Pre-norm ViT block: x + proj(attn(ln1 x)); x + fc2(quick_gelu(fc1(ln2 x)))."""

    def __init__(self, v: VisionConfig, runtime: RuntimeConfig, *, rngs: nnx.Rngs):
        pd = runtime.param_dtype
        self.dtype = jnp.dtype(runtime.dtype)
        self.attention_impl = runtime.vision_attention_impl
        self.norm1 = LayerNorm(v.embed_dim, v.layer_norm_eps, "vision_embed", param_dtype=pd, rngs=rngs)
        self.norm2 = LayerNorm(v.embed_dim, v.layer_norm_eps, "vision_embed", param_dtype=pd, rngs=rngs)
        qkv_shape = (v.embed_dim, 3, v.num_heads, v.head_dim)  # HF rows: [q|k|v] x head x dim
        self.qkv_kernel = make_param(rngs, normal_init, qkv_shape,
                                     ("vision_embed", None, "vision_heads", "vision_head_dim"), pd)
        self.qkv_bias = make_param(rngs, zeros_init, qkv_shape[1:],
                                   (None, "vision_heads", "vision_head_dim"), pd)
        self.proj_kernel = make_param(rngs, normal_init, (v.num_heads, v.head_dim, v.embed_dim),
                                      ("vision_heads", "vision_head_dim", "vision_embed"), pd)
        self.proj_bias = make_param(rngs, zeros_init, (v.embed_dim,), ("vision_embed",), pd)
        self.fc1_kernel = make_param(rngs, normal_init, (v.embed_dim, v.mlp_dim),
                                     ("vision_embed", "vision_mlp"), pd)
        self.fc1_bias = make_param(rngs, zeros_init, (v.mlp_dim,), ("vision_mlp",), pd)
        self.fc2_kernel = make_param(rngs, normal_init, (v.mlp_dim, v.embed_dim),
                                     ("vision_mlp", "vision_embed"), pd)
        self.fc2_bias = make_param(rngs, zeros_init, (v.embed_dim,), ("vision_embed",), pd)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
                 segment_ids: jax.Array) -> jax.Array:
        """x: [N, E]; cos/sin: float32[N, head_dim]; segment_ids: int32[N]."""
        dt = self.dtype
        with jax.named_scope("vision_attention"):
            h = self.norm1(x)
            qkv = constrain(dense(h, self.qkv_kernel[...], self.qkv_bias[...], "ne,ethd->nthd", dt),
                            ("patches", None, "act_heads", "head_dim"))
            q, k = apply_vision_rotary(qkv[:, 0], qkv[:, 1], cos, sin)
            q, k, v = tag(q, QUERY), tag(k, KEY), tag(qkv[:, 2], VALUE)
            seg = segment_ids[None]
            o = attention(q[None], k[None], v[None], q_segment_ids=seg, kv_segment_ids=seg,
                          causal=False, impl=self.attention_impl)[0]
            o = tag(o, ATTENTION_OUT)
            x = constrain(x + dense(o, self.proj_kernel[...], self.proj_bias[...], "nhd,hde->ne", dt), STREAM)
        with jax.named_scope("vision_mlp"):
            h = constrain(dense(self.norm2(x), self.fc1_kernel[...], self.fc1_bias[...], "ne,em->nm", dt),
                          ("patches", "act_mlp"))
            x = x + dense(quick_gelu(h), self.fc2_kernel[...], self.fc2_bias[...], "nm,me->ne", dt)
        return constrain(x, STREAM)


class PatchMerger(nnx.Module):
    """ln_q per patch, 4 consecutive rows (one 2x2 window) -> 4E, exact-erf GELU MLP -> D."""

    def __init__(self, v: VisionConfig, runtime: RuntimeConfig, *, rngs: nnx.Rngs):
        pd = runtime.param_dtype
        self.dtype = jnp.dtype(runtime.dtype)
        self.merge_dim = v.merge_dim
        self.ln_q = LayerNorm(v.embed_dim, v.layer_norm_eps, "vision_embed", param_dtype=pd, rngs=rngs)
        self.fc1_kernel = make_param(rngs, normal_init, (v.merge_dim, v.merge_dim),
                                     ("vision_merge", "vision_merge_mlp"), pd)
        self.fc1_bias = make_param(rngs, zeros_init, (v.merge_dim,), ("vision_merge_mlp",), pd)
        self.fc2_kernel = make_param(rngs, normal_init, (v.merge_dim, v.out_hidden_size),
                                     ("vision_merge_mlp", "embed"), pd)
        self.fc2_bias = make_param(rngs, zeros_init, (v.out_hidden_size,), ("embed",), pd)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, E] -> [N / merge^2, D]."""
        dt = self.dtype
        h = self.ln_q(x).reshape(-1, self.merge_dim)
        h = constrain(dense(h, self.fc1_kernel[...], self.fc1_bias[...], "nm,mk->nk", dt), ("patches", "act_mlp"))
        h = jax.nn.gelu(h, approximate=False)  # nn.GELU() default is exact erf (docs/numerics.md)
        return constrain(dense(h, self.fc2_kernel[...], self.fc2_bias[...], "nk,kd->nd", dt), STREAM)


class VisionTower(nnx.Module):
    """pixel_values [N, 1176] -> merged vision tokens [N/4, D]."""

    def __init__(self, v: VisionConfig, runtime: RuntimeConfig, *, rngs: nnx.Rngs):
        self.dtype = jnp.dtype(runtime.dtype)
        self.remat = runtime.vision_remat
        self.head_dim, self.rope_theta = v.head_dim, v.rope_theta
        # Conv3d with kernel == stride on a flattened patch is a linear map; the (C, T, P, P)
        # row-major flattening of the conv weight equals the pixel row order (docs/checkpoint_names.md).
        self.patch_embed = make_param(rngs, normal_init, (v.patch_dim, v.embed_dim),
                                      ("vision_patch", "vision_embed"), runtime.param_dtype)
        self.blocks = create_stacked(lambda r: VisionBlock(v, runtime, rngs=r), v.depth, rngs,
                                     axis_name="vision_layers")
        self.merger = PatchMerger(v, runtime, rngs=rngs)

    def encode(self, pixel_values: jax.Array, pos_hw: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """The ViT blocks without the merger: [N, E]."""
        dt = self.dtype
        # HF casts pixel_values to the ViT dtype before the patch embedding (docs/numerics.md).
        x = constrain(dense(pixel_values.astype(dt), self.patch_embed[...], None, "np,pe->ne", dt), STREAM)
        cos, sin = vision_rotary_cos_sin(pos_hw, self.head_dim, self.rope_theta)
        x, _ = scan_layers(self.blocks, lambda block, h, _: (block(h, cos, sin, segment_ids), None), x,
                           remat=self.remat)
        return x

    def __call__(self, pixel_values: jax.Array, pos_hw: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """pixel_values: float[N, 1176]; pos_hw: int32[N, 2]; segment_ids: int32[N]."""
        with jax.named_scope("vision_tower"):
            x = self.encode(pixel_values, pos_hw, segment_ids)
        with jax.named_scope("merger"):
            return self.merger(x)
