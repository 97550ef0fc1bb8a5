"""Dataset record formats: the canonical record, importers, and validation with reasons.

The canonical record (ShareGPT / ms-swift style)::

    {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "..."}]},
                  {"role": "assistant", "content": "..."}],
     "images": ["a.jpg"], "videos": []}

Content is a string or a list of items ``{"type": "image" | "video" | "text"}``; the k-th image
item refers to ``images[k]`` (same for videos). Pure Python: no grain / tfds import here.
"""

from __future__ import annotations

import os
import re
from typing import Any

_LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "system": "system"}
_PLACEHOLDER = re.compile(r"(<image>|<video>)")


def _split_placeholders(text: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for part in _PLACEHOLDER.split(text):
        if part == "<image>":
            items.append({"type": "image"})
        elif part == "<video>":
            items.append({"type": "video"})
        elif part.strip("\n"):
            items.append({"type": "text", "text": part.strip("\n") if not items else part.lstrip("\n")})
    return items


def from_llava(record: dict[str, Any]) -> dict[str, Any]:
    """LLaVA ``{"image": path | [paths], "video": ..., "conversations": [{"from", "value"}]}``
    with ``<image>`` / ``<video>`` placeholders in the text."""
    if "conversations" not in record:
        raise ValueError("LLaVA record has no 'conversations'")
    messages = []
    for i, turn in enumerate(record["conversations"]):
        role = _LLAVA_ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise ValueError(f"conversations[{i}]: unknown speaker {turn.get('from')!r}")
        messages.append({"role": role, "content": _split_placeholders(str(turn.get("value", "")))})

    def as_list(x: Any) -> list[str]:
        return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]

    return {"messages": messages, "images": as_list(record.get("image")), "videos": as_list(record.get("video"))}


def from_hf_content(record: dict[str, Any]) -> dict[str, Any]:
    """transformers-style messages whose image/video items carry their source inline
    (``{"type": "image", "image": "a.jpg"}``); sources move to ``images`` / ``videos``."""
    images, videos, messages = [], [], []
    for msg in record.get("messages", []):
        content = msg.get("content")
        if isinstance(content, list):
            new = []
            for item in content:
                kind = item.get("type")
                if kind == "image" or "image" in item or "image_url" in item:
                    images.append(item.get("image", item.get("image_url", item.get("url"))))
                    new.append({"type": "image"})
                elif kind == "video" or "video" in item:
                    videos.append(item.get("video", item.get("url")))
                    new.append({"type": "video"})
                else:
                    new.append(dict(item))
            content = new
        messages.append({**msg, "content": content})
    return {"messages": messages, "images": images, "videos": videos}


def count_items(record: dict[str, Any], kind: str) -> int:
    n = 0
    for msg in record.get("messages", []):
        content = msg.get("content")
        if isinstance(content, list):
            n += sum(1 for item in content if item.get("type") == kind)
    return n


def validate(record: dict[str, Any], root: str | os.PathLike | None = None) -> list[str]:
    """Reasons this record cannot be trained on (empty list: valid)."""
    reasons = []
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return ["no messages"]
    roles = [m.get("role") for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    if not body or body[0] != "user":
        reasons.append("the first non-system message must be from the user")
    for i, (a, b) in enumerate(zip(body, body[1:])):
        if a == b or {a, b} != {"user", "assistant"}:
            reasons.append(f"roles must alternate user/assistant; got {a!r} then {b!r} at turn {i + 1}")
            break
    if "assistant" not in body:
        reasons.append("no assistant message to learn from")
    for kind, key in (("image", "images"), ("video", "videos")):
        sources = record.get(key) or []
        n = count_items(record, kind)
        if n != len(sources):
            reasons.append(f"{n} {kind} placeholder(s) but {len(sources)} {key}")
        for src in sources:
            if isinstance(src, str) and not src.startswith(("http://", "https://", "data:")):
                path = os.path.join(root, src) if root is not None and not os.path.isabs(src) else src
                if not os.path.exists(path):
                    reasons.append(f"{kind} file not found: {path}")
    return reasons
