"""Freezing by component, so the three training stages of the Qwen2-VL paper (section 2.2:
ViT first, then everything, then the LLM on instructions) are configs, not code.

Components of the parameter tree: ``vision`` (the ViT itself: ``visual.patch_embed`` and
``visual.blocks``), ``merger`` (everything else under ``visual``: the merger, or any other
visual adapter put there) and ``llm`` (token embeddings, decoder, lm_head). A new adapter
therefore belongs to ``freeze_merger`` without a change here.
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


VIT_PARTS = ("patch_embed", "blocks")  # under ``visual``; the rest of ``visual`` is the adapter


def component_of(path: tuple[Any, ...]) -> str:
    keys = [str(getattr(k, "key", k)) for k in path]
    if keys[0] == "visual":
        return "vision" if len(keys) > 1 and keys[1] in VIT_PARTS else "merger"
    return "llm"


def trainable_labels(params: Any, freeze: FreezeConfig) -> Any:
    """A pytree like ``params`` with "train" / "freeze" at every leaf."""
    frozen = {"vision": freeze.freeze_vision, "merger": freeze.freeze_merger, "llm": freeze.freeze_llm}

    def label(path, _):
        return "freeze" if frozen[component_of(path)] else "train"

    return jax.tree_util.tree_map_with_path(label, params)
