"""Qwen2-VL: token embeddings -> vision tower -> scatter -> M-RoPE decoder -> logits.

The module consumes the host-prepared batch of ``layout.prepare_model_inputs`` (fixed shapes;
no Python data-dependent control flow), so the same code runs eagerly, under ``jax.jit`` and,
split into ``(graphdef, params)``, inside pure train/serve steps (``forward``). Generation calls
the same ``__call__`` with a ``KVCache``: prefill with the prompt batch, decode with one token.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from qwen2vl_jax.config import ModelConfig, RuntimeConfig
from qwen2vl_jax.generation.cache import KVCache
from qwen2vl_jax.nn.decoder import Decoder
from qwen2vl_jax.nn.params import make_param, normal_init
from qwen2vl_jax.nn.vision import VisionTower
from qwen2vl_jax.ops.lm_head import lm_head_logits
from qwen2vl_jax.ops.rope import mrope_cos_sin
from qwen2vl_jax.ops.vision_scatter import scatter_vision_tokens
from qwen2vl_jax.sharding.rules import constrain


class Qwen2VL(nnx.Module):
    def __init__(self, cfg: ModelConfig, runtime: RuntimeConfig | None = None, *, rngs: nnx.Rngs):
        runtime = runtime or RuntimeConfig()
        t = cfg.text
        self.text = t
        self.dtype = jnp.dtype(runtime.dtype)
        pd = runtime.param_dtype
        self.embed_tokens = make_param(rngs, normal_init, (t.vocab_size, t.hidden_size), ("vocab", "embed"), pd)
        self.visual = VisionTower(cfg.vision, runtime, rngs=rngs)
        self.decoder = Decoder(t, runtime, rngs=rngs)
        if not t.tie_word_embeddings:
            self.lm_head = make_param(rngs, normal_init, (t.hidden_size, t.vocab_size), ("embed", "vocab"), pd)

    def embed(self, batch: dict[str, Any]) -> jax.Array:
        """Token embeddings with the merged vision tokens scattered into their slots: [B, S, D]."""
        x = jnp.take(self.embed_tokens[...].astype(self.dtype), batch["input_ids"], axis=0)
        if batch.get("pixel_values") is not None:
            feats = self.visual(batch["pixel_values"], batch["vision_pos"], batch["vision_segment_ids"])
            x = scatter_vision_tokens(x, feats, batch["scatter_index"])
        return constrain(x, ("batch", "sequence", "act_embed"))

    def rotary(self, position_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
        """cos/sin [B, S, head_dim] of the decoder's position encoding for int[3, B, S] ids.

        ``rope_1d`` uses the same tables (its ids are equal on the three streams, where M-RoPE
        is ordinary RoPE); ``none`` is cos 1, sin 0: the rotation is an exact identity."""
        t = self.text
        if t.position_encoding == "none":
            shape = (*position_ids.shape[1:], t.head_dim)
            return jnp.ones(shape, self.dtype), jnp.zeros(shape, self.dtype)
        return mrope_cos_sin(position_ids, t.head_dim, t.rope_theta, t.mrope_section, self.dtype)

    def logits_from_hidden(self, h: jax.Array) -> jax.Array:
        """lm_head with fp32 accumulation; logits are float32 (transformers 4.45's
        ``logits.float()``; later versions return the model dtype unless computing a loss)."""
        return lm_head_logits(h, self.head_weight(), tied=self.text.tie_word_embeddings, dtype=self.dtype)

    def head_weight(self) -> jax.Array:
        """The lm_head weight as stored: the embedding table [V, D] when tied, else [D, V]."""
        return self.embed_tokens[...] if self.text.tie_word_embeddings else self.lm_head[...]

    def __call__(self, batch: dict[str, Any], *, cache: KVCache | None = None, collect: bool = False,
                 last_only: bool = False, hidden_only: bool = False) -> dict[str, Any]:
        """Returns ``logits`` float32[B, S, V] (``[B, 1, V]`` of the last position with
        ``last_only``), or with ``hidden_only`` the final hidden states ``hidden`` [B, S, D] instead
        (training computes the loss from them in chunks: full logits never exist); with ``cache``,
        the updated ``cache``; with ``collect`` also ``inputs_embeds``, ``layer_outputs``
        [L, B, S, D] (before the final norm) and ``last_hidden_state``."""
        x = self.embed(batch)
        cos, sin = self.rotary(batch["position_ids"])
        with jax.named_scope("decoder"):
            h, per_layer, cache = self.decoder(x, cos, sin, batch["segment_ids"], cache=cache, collect=collect)
        if hidden_only:
            out: dict[str, Any] = {"hidden": h}
        else:
            logits = self.logits_from_hidden(h[:, -1:] if last_only else h)
            out = {"logits": constrain(logits, ("batch", "sequence", "act_vocab"))}
        if cache is not None:
            out["cache"] = cache
        if collect:
            out.update(inputs_embeds=x, layer_outputs=per_layer, last_hidden_state=h)
        return out


def forward(graphdef: nnx.GraphDef, params: nnx.State, batch: dict[str, Any]) -> jax.Array:
    """Pure function of (params, batch) -> logits, for ``jax.jit``."""
    model = nnx.merge(graphdef, params)
    return model(batch)["logits"]


def abstract_model(cfg: ModelConfig, runtime: RuntimeConfig | None = None) -> Qwen2VL:
    """The model with ShapeDtypeStruct leaves: no memory, any size (jax.eval_shape)."""
    return nnx.eval_shape(lambda: Qwen2VL(cfg, runtime, rngs=nnx.Rngs(0)))


def init_params(cfg: ModelConfig, runtime: RuntimeConfig, seed: int, shardings: Any = None) -> dict:
    """Randomly initialised params (a pure dict), created under ``jit`` straight into
    ``shardings`` (a pure dict of shardings, e.g. ``sharding.params.param_shardings``): no
    parameter is ever whole on one device unless its sharding says so."""

    def init():
        return nnx.to_pure_dict(nnx.state(Qwen2VL(cfg, runtime, rngs=nnx.Rngs(seed)), nnx.Param))

    return jax.jit(init, out_shardings=shardings)()


def count_params(cfg: ModelConfig) -> int:
    """Exact number of parameters (tied embeddings counted once), without allocating them."""
    state = nnx.state(abstract_model(cfg), nnx.Param)
    return sum(int(x.size) for x in jax.tree.leaves(state))
