"""Qwen2-VL: token embeddings -> vision tower -> scatter -> M-RoPE decoder -> logits.

The module consumes the host-prepared batch of ``layout.prepare_model_inputs`` (fixed shapes;
no Python data-dependent control flow), so the same code runs eagerly, under ``jax.jit`` and,
split into ``(graphdef, params)``, inside pure train/serve steps (``forward``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from qwen2vl_jax.config import ModelConfig
from qwen2vl_jax.nn.decoder import Decoder
from qwen2vl_jax.nn.params import make_param, normal_init
from qwen2vl_jax.nn.vision import VisionTower
from qwen2vl_jax.ops.rope import mrope_cos_sin
from qwen2vl_jax.ops.vision_scatter import scatter_vision_tokens


class Qwen2VL(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        t = cfg.text
        self.cfg = cfg
        self.embed_tokens = make_param(rngs, normal_init, (t.vocab_size, t.hidden_size),
                                       ("vocab", "embed"), cfg.param_dtype)
        self.visual = VisionTower(cfg, rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)
        if not t.tie_word_embeddings:
            self.lm_head = make_param(rngs, normal_init, (t.hidden_size, t.vocab_size),
                                      ("embed", "vocab"), cfg.param_dtype)

    def embed(self, batch: dict[str, Any]) -> jax.Array:
        """Token embeddings with the merged vision tokens scattered into their slots: [B, S, D]."""
        dt = jnp.dtype(self.cfg.dtype)
        x = jnp.take(self.embed_tokens[...].astype(dt), batch["input_ids"], axis=0)
        if batch.get("pixel_values") is not None:
            feats = self.visual(batch["pixel_values"], batch["vision_pos"], batch["vision_segment_ids"])
            x = scatter_vision_tokens(x, feats, batch["scatter_index"])
        return x

    def logits_from_hidden(self, h: jax.Array) -> jax.Array:
        """lm_head with fp32 accumulation; logits are returned in float32 (spec §10.15)."""
        dt = jnp.dtype(self.cfg.dtype)
        if self.cfg.text.tie_word_embeddings:
            return jnp.einsum("bsd,vd->bsv", h, self.embed_tokens[...].astype(dt),
                              preferred_element_type=jnp.float32)
        return jnp.einsum("bsd,dv->bsv", h, self.lm_head[...].astype(dt),
                          preferred_element_type=jnp.float32)

    def __call__(self, batch: dict[str, Any], *, collect: bool = False) -> dict[str, jax.Array]:
        """Returns ``logits`` float32[B, S, V]; with ``collect`` also ``inputs_embeds``,
        ``layer_outputs`` [L, B, S, D] (before the final norm) and ``last_hidden_state``."""
        t = self.cfg.text
        x = self.embed(batch)
        cos, sin = mrope_cos_sin(batch["position_ids"], t.head_dim, t.rope_theta, t.mrope_section, x.dtype)
        with jax.named_scope("decoder"):
            h, per_layer = self.decoder(x, cos, sin, batch["segment_ids"], collect=collect)
        out = {"logits": self.logits_from_hidden(h)}
        if collect:
            out.update(inputs_embeds=x, layer_outputs=per_layer, last_hidden_state=h)
        return out


def forward(graphdef: nnx.GraphDef, params: nnx.State, batch: dict[str, Any]) -> jax.Array:
    """Pure function of (params, batch) -> logits, for ``jax.jit``."""
    model = nnx.merge(graphdef, params)
    return model(batch)["logits"]


def abstract_model(cfg: ModelConfig) -> Qwen2VL:
    """The model with ShapeDtypeStruct leaves: no memory, any size (jax.eval_shape)."""
    return nnx.eval_shape(lambda: Qwen2VL(cfg, rngs=nnx.Rngs(0)))


def count_params(cfg: ModelConfig) -> int:
    """Exact number of parameters (tied embeddings counted once), without allocating them."""
    state = nnx.state(abstract_model(cfg), nnx.Param)
    return sum(int(x.size) for x in jax.tree.leaves(state))
