"""Architecture overrides in nested form, the same for recipes (``model.overrides``) and
``from_pretrained(..., overrides=...)``: ``{"text": {"position_encoding": "rope_1d"},
"vision": {...}}``. Unknown keys are errors naming the key and the valid ones; every field's own
validation (e.g. a switch's allowed values) runs on the result."""

from __future__ import annotations

import dataclasses
from typing import Any


def apply_overrides(obj: Any, changes: dict, prefix: str = "model.overrides") -> Any:
    """``obj`` (a config dataclass) with the nested ``changes`` applied."""
    if not isinstance(changes, dict):
        raise ValueError(f"{prefix}: expected a mapping of fields, got {changes!r}")
    valid = {f.name for f in dataclasses.fields(obj)}
    updates = {}
    for key, value in changes.items():
        if key not in valid:
            raise ValueError(f"unknown config key {prefix}.{key}; valid: {', '.join(sorted(valid))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            value = apply_overrides(current, value, f"{prefix}.{key}")
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        updates[key] = value
    return dataclasses.replace(obj, **updates)
