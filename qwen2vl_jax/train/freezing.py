"""Freezing by component, so the paper's three stages are configs (ARCHITECTURE "Training").

Components of the parameter tree: ``vision`` (patch embed + ViT blocks), ``merger`` and ``llm``
(token embeddings, decoder, lm_head). Stage 1 trains vision + merger with the LLM frozen, stage 2
trains everything, stage 3 (instruction tuning) freezes the ViT.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class FreezeConfig:
    freeze_vision: bool = False
    freeze_merger: bool = False
    freeze_llm: bool = False


def component_of(path: tuple[Any, ...]) -> str:
    keys = [str(getattr(k, "key", k)) for k in path]
    if keys[0] == "visual":
        return "merger" if len(keys) > 1 and keys[1] == "merger" else "vision"
    return "llm"


def trainable_labels(params: Any, freeze: FreezeConfig) -> Any:
    """A pytree like ``params`` with "train" / "freeze" at every leaf."""
    frozen = {"vision": freeze.freeze_vision, "merger": freeze.freeze_merger, "llm": freeze.freeze_llm}

    def label(path, _):
        return "freeze" if frozen[component_of(path)] else "train"

    return jax.tree_util.tree_map_with_path(label, params)
