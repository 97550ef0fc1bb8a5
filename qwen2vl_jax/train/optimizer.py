"""AdamW with linear warmup + cosine decay and global-norm clipping, over the TRAINABLE
parameters only (``freezing.split_trainable``): frozen parts have no optimizer state and stay
bitwise unchanged because the step never updates them."""

from __future__ import annotations

import dataclasses
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
                             weight_decay=cfg.weight_decay))
    return optax.chain(*parts)
