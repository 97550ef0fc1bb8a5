"""AdamW with linear warmup + cosine decay and global-norm clipping, over the TRAINABLE
parameters only (``freezing.split_trainable``): frozen parts have no optimizer state and stay
bitwise unchanged because the step never updates them.

Weight decay is masked by parameter PATH, not by rank (the decoder and ViT layers are stacked
over a leading layers axis, so a norm scale is 2-D and a q bias 3-D): by default it skips

* norms: every leaf of a norm module (a ``scale`` leaf, or any leaf under a key named like a
  norm: ``input_norm``, ``norm1``, ``ln_q``, ...);
* biases: a leaf named ``bias`` or ``*_bias`` (a LayerNorm's ``bias`` is both a norm and a bias
  leaf: decayed only when both kinds are);
* embeddings: ``embed_tokens`` (with tied embeddings this is also the output projection).

Everything else is decayed, ``lm_head`` and ``patch_embed`` included (weight matrices).
``OptimizerConfig.decay_norms`` / ``decay_biases`` / ``decay_embeddings`` turn each kind back on.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 1e-5
    warmup_steps: int = 100
    total_steps: int = 0  # 0: the run's steps (decay over the whole run)
    end_learning_rate_ratio: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_grad_norm: float | None = 1.0
    decay_norms: bool = False  # weight decay on norm parameters (see the module docstring)
    decay_biases: bool = False
    decay_embeddings: bool = False


_NORM_KEY = re.compile(r"(^|_)(norm\d*|ln(_\w+)?|layernorm|layer_norm)$")
EMBEDDING_KEYS = frozenset({"embed_tokens"})


def parameter_kinds(path: tuple[Any, ...]) -> frozenset[str]:
    """The kinds (``"norm"``, ``"bias"``, ``"embedding"``) of the parameter at ``path`` (pytree
    keys of the nested params dict); empty for a weight matrix."""
    keys = [str(getattr(k, "key", k)) for k in path]
    leaf, parents = keys[-1], keys[:-1]
    kinds = set()
    if leaf == "scale" or any(_NORM_KEY.search(k) for k in parents):
        kinds.add("norm")
    if leaf == "bias" or leaf.endswith("_bias"):
        kinds.add("bias")
    if leaf in EMBEDDING_KEYS:
        kinds.add("embedding")
    return frozenset(kinds)


def weight_decay_mask(cfg: OptimizerConfig, params: Any) -> Any:
    """A pytree like ``params`` with True where weight decay applies (for ``optax.adamw(mask=)``)."""
    decayed = {"norm": cfg.decay_norms, "bias": cfg.decay_biases, "embedding": cfg.decay_embeddings}

    def decay(path, _):
        return all(decayed[kind] for kind in parameter_kinds(path))

    return jax.tree_util.tree_map_with_path(decay, params)


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=max(cfg.total_steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.end_learning_rate_ratio,
    )


def make_optimizer(cfg: OptimizerConfig, trainable: Any) -> optax.GradientTransformation:
    """The optimizer of ``trainable`` (the trainable part of the params, a pytree)."""
    if not jax.tree.leaves(trainable):
        raise ValueError("every component is frozen (freeze_vision, freeze_merger and freeze_llm): nothing to train")
    parts = []
    if cfg.clip_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
    parts.append(optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=lambda p: weight_decay_mask(cfg, p)))
    return optax.chain(*parts)
