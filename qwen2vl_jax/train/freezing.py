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


def split_trainable(params: dict, freeze: FreezeConfig) -> tuple[dict, dict]:
    """``(trainable, frozen)``: two nested dicts holding the leaves of each kind (empty
    subtrees dropped). The train step differentiates and updates only ``trainable``, so frozen
    parts get no gradient buffer and no optimizer state at all."""
    labels = trainable_labels(params, freeze)

    def pick(tree, lab, want):
        if isinstance(tree, dict):
            out = {k: pick(tree[k], lab[k], want) for k in tree}
            out = {k: v for k, v in out.items() if v is not _EMPTY}
            return out if out else _EMPTY
        return tree if lab == want else _EMPTY

    trainable, frozen = pick(params, labels, "train"), pick(params, labels, "freeze")
    return (trainable if trainable is not _EMPTY else {}), (frozen if frozen is not _EMPTY else {})


def merge_trainable(trainable: dict, frozen: dict) -> dict:
    """The inverse of ``split_trainable``."""
    out = dict(frozen)
    for key, value in trainable.items():
        out[key] = merge_trainable(value, frozen.get(key, {})) if isinstance(value, dict) else value
    return out


class _Empty:
    def __repr__(self) -> str:
        return "<empty>"


_EMPTY = _Empty()
