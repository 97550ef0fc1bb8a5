"""Resuming with a changed recipe: keys that change what is trained must match the checkpoint's.

Changing the architecture, the data (source, budgets, labels), the optimizer or the schedule
under a running optimizer state silently trains something else; so a resume refuses and lists
the differing keys, unless the recipe says ``accept_changed_recipe: true``. Everything about how
or how long it runs may change freely: ``steps``, the mesh, the process count, logging,
checkpoint cadence, evaluation, worker counts.
"""

from __future__ import annotations

from typing import Any

# Dotted prefixes that may change between a checkpoint and its resume.
FREE = ("steps", "runtime.mesh", "log_every", "checkpoint_every", "keep_checkpoints", "tensorboard",
        "wandb", "eval", "peak_tflops", "data.num_workers", "output_dir", "checkpoint_dir", "accept_changed_recipe",
        "max_nonfinite_steps", "runtime.vision_attention_impl", "runtime.text_attention_impl",
        "runtime.vision_remat", "runtime.text_remat", "runtime.buckets")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value and "type" not in value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _normalise(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def changed_keys(saved: dict, current: dict) -> list[str]:
    """Dotted keys (outside ``FREE``) whose values differ: ``key: saved -> current``."""
    a, b = _flatten(saved), _flatten(current)
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == f or key.startswith(f + ".") for f in FREE):
            continue
        if _normalise(a.get(key)) != _normalise(b.get(key)):
            out.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


def check_resume(saved: dict, current: dict, accept: bool, say=print) -> None:
    if not saved:
        return
    diff = changed_keys(saved, current)
    if not diff:
        return
    if accept:
        say("resuming with a changed recipe (accept_changed_recipe=true): " + "; ".join(diff))
        return
    raise ValueError("the recipe changed since the checkpoint in what is trained: " + "; ".join(diff)
                     + " (set accept_changed_recipe=true to resume anyway)")
