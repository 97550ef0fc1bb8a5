"""The one table that maps HF safetensors names to our parameter paths, both directions.

HF Linear weights are ``[out, in]``; ours are einsum kernels with split head axes
(``[in, heads, head_dim]`` etc.), so each rule carries the reshape/transpose to ours and back.
Decoder and ViT layers are stacked (leading ``layers`` axis): a rule with ``{i}`` in its name
fills one slice of the stacked parameter. Names are accepted in the on-disk form
(``model.layers.*``, ``visual.*``) and in the transformers >= 4.52 in-memory form
(``model.language_model.*``, ``model.visual.*``); see docs/checkpoint_names.md.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

from qwen2vl_jax.config import ModelConfig

Path = tuple[str, ...]
Transform = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
    hf_name: str  # may contain "{i}" (the layer index)
    path: Path  # our parameter path; stacked along axis 0 when hf_name has "{i}"
    to_ours: Transform
    to_hf: Transform

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf_name


def normalize_hf_name(name: str) -> str:
    """Map transformers >= 4.52 in-memory names to the on-disk names (docs/checkpoint_names.md)."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    if name.startswith("model.visual."):
        return name[len("model."):]
    return name


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def build_rules(cfg: ModelConfig) -> list[Rule]:
    t, v = cfg.text, cfg.vision
    h, kv, hd = t.num_attention_heads, t.num_key_value_heads, t.head_dim
    e, vh, vd = v.embed_dim, v.num_heads, v.head_dim
    T = lambda x: x.T

    def heads_in(n_heads: int, head_dim: int) -> tuple[Transform, Transform]:
        # [n*hd, D] <-> [D, n, hd]
        return (lambda x: x.T.reshape(x.shape[1], n_heads, head_dim),
                lambda x: x.reshape(x.shape[0], -1).T)

    def heads_bias(n_heads: int, head_dim: int) -> tuple[Transform, Transform]:
        return (lambda x: x.reshape(n_heads, head_dim), lambda x: x.reshape(-1))

    def heads_out(n_heads: int, head_dim: int) -> tuple[Transform, Transform]:
        # [D, n*hd] <-> [n, hd, D]
        return (lambda x: x.T.reshape(n_heads, head_dim, x.shape[0]),
                lambda x: x.reshape(-1, x.shape[-1]).T)

    lb = "visual.blocks.{i}."
    ll = "model.layers.{i}."
    vb = ("visual", "blocks")
    dl = ("decoder", "layers")
    rules = [
        # Conv3d [E, C, T, P, P] <-> linear [C*T*P*P, E] (docs/checkpoint_names.md, Layouts).
        Rule("visual.patch_embed.proj.weight", ("visual", "patch_embed"),
             lambda x: x.reshape(x.shape[0], -1).T,
             lambda x: x.T.reshape(e, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)),
        Rule(lb + "norm1.weight", vb + ("norm1", "scale"), _identity, _identity),
        Rule(lb + "norm1.bias", vb + ("norm1", "bias"), _identity, _identity),
        Rule(lb + "norm2.weight", vb + ("norm2", "scale"), _identity, _identity),
        Rule(lb + "norm2.bias", vb + ("norm2", "bias"), _identity, _identity),
        # qkv rows are [q | k | v], each head-major (docs/checkpoint_names.md, Layouts).
        Rule(lb + "attn.qkv.weight", vb + ("qkv_kernel",),
             lambda x: x.T.reshape(e, 3, vh, vd), lambda x: x.reshape(e, -1).T),
        Rule(lb + "attn.qkv.bias", vb + ("qkv_bias",),
             lambda x: x.reshape(3, vh, vd), lambda x: x.reshape(-1)),
        Rule(lb + "attn.proj.weight", vb + ("proj_kernel",), *heads_out(vh, vd)),
        Rule(lb + "attn.proj.bias", vb + ("proj_bias",), _identity, _identity),
        Rule(lb + "mlp.fc1.weight", vb + ("fc1_kernel",), T, T),
        Rule(lb + "mlp.fc1.bias", vb + ("fc1_bias",), _identity, _identity),
        Rule(lb + "mlp.fc2.weight", vb + ("fc2_kernel",), T, T),
        Rule(lb + "mlp.fc2.bias", vb + ("fc2_bias",), _identity, _identity),
        Rule("visual.merger.ln_q.weight", ("visual", "merger", "ln_q", "scale"), _identity, _identity),
        Rule("visual.merger.ln_q.bias", ("visual", "merger", "ln_q", "bias"), _identity, _identity),
        Rule("visual.merger.mlp.0.weight", ("visual", "merger", "fc1_kernel"), T, T),
        Rule("visual.merger.mlp.0.bias", ("visual", "merger", "fc1_bias"), _identity, _identity),
        Rule("visual.merger.mlp.2.weight", ("visual", "merger", "fc2_kernel"), T, T),
        Rule("visual.merger.mlp.2.bias", ("visual", "merger", "fc2_bias"), _identity, _identity),
        Rule("model.embed_tokens.weight", ("embed_tokens",), _identity, _identity),
        Rule(ll + "self_attn.q_proj.weight", dl + ("q_kernel",), *heads_in(h, hd)),
        Rule(ll + "self_attn.q_proj.bias", dl + ("q_bias",), *heads_bias(h, hd)),
        Rule(ll + "self_attn.k_proj.weight", dl + ("k_kernel",), *heads_in(kv, hd)),
        Rule(ll + "self_attn.k_proj.bias", dl + ("k_bias",), *heads_bias(kv, hd)),
        Rule(ll + "self_attn.v_proj.weight", dl + ("v_kernel",), *heads_in(kv, hd)),
        Rule(ll + "self_attn.v_proj.bias", dl + ("v_bias",), *heads_bias(kv, hd)),
        Rule(ll + "self_attn.o_proj.weight", dl + ("o_kernel",), *heads_out(h, hd)),
        Rule(ll + "mlp.gate_proj.weight", dl + ("gate_kernel",), T, T),
        Rule(ll + "mlp.up_proj.weight", dl + ("up_kernel",), T, T),
        Rule(ll + "mlp.down_proj.weight", dl + ("down_kernel",), T, T),
        Rule(ll + "input_layernorm.weight", dl + ("input_norm", "scale"), _identity, _identity),
        Rule(ll + "post_attention_layernorm.weight", dl + ("post_attention_norm", "scale"),
             _identity, _identity),
        Rule("model.norm.weight", ("decoder", "norm", "scale"), _identity, _identity),
    ]
    if not t.tie_word_embeddings:
        rules.append(Rule("lm_head.weight", ("lm_head",), T, T))
    return rules


def num_layers(cfg: ModelConfig, rule: Rule) -> int:
    return cfg.vision.depth if rule.hf_name.startswith("visual.") else cfg.text.num_hidden_layers


class NameMatcher:
    """Resolves an HF tensor name to (rule, layer index or None)."""

    def __init__(self, rules: list[Rule]):
        self._exact = {r.hf_name: r for r in rules if not r.stacked}
        self._patterns = [
            (re.compile("^" + re.escape(r.hf_name).replace(r"\{i\}", r"(\d+)") + "$"), r)
            for r in rules if r.stacked
        ]

    def match(self, hf_name: str) -> tuple[Rule, int | None] | None:
        name = normalize_hf_name(hf_name)
        if name in self._exact:
            return self._exact[name], None
        for pattern, rule in self._patterns:
            m = pattern.match(name)
            if m:
                return rule, int(m.group(1))
        return None


def expected_hf_names(cfg: ModelConfig) -> list[str]:
    """Every tensor name a complete checkpoint of this config holds (on-disk form)."""
    names = []
    for rule in build_rules(cfg):
        if rule.stacked:
            names.extend(rule.hf_name.format(i=i) for i in range(num_layers(cfg, rule)))
        else:
            names.append(rule.hf_name)
    return names
