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


def _require(ok: bool, reason: str) -> None:
    if not ok:
        raise ValueError(reason)


def from_llava(record: dict[str, Any]) -> dict[str, Any]:
    """LLaVA ``{"image": path | [paths], "video": ..., "conversations": [{"from", "value"}]}``
    with ``<image>`` / ``<video>`` placeholders in the text. ValueError names what is wrong."""
    _require(isinstance(record, dict), f"expected a JSON object, got {type(record).__name__}")
    if "conversations" not in record:
        raise ValueError("LLaVA record has no 'conversations'")
    turns = record["conversations"]
    _require(isinstance(turns, list), f"'conversations' must be a list, got {type(turns).__name__}")
    messages = []
    for i, turn in enumerate(turns):
        _require(isinstance(turn, dict), f"conversations[{i}]: must be an object, got {type(turn).__name__}")
        speaker = turn.get("from")
        role = _LLAVA_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
        if role is None:
            raise ValueError(f"conversations[{i}]: unknown speaker {speaker!r} "
                             f"(expected one of {sorted(_LLAVA_ROLES)})")
        value = turn.get("value", "")
        _require(isinstance(value, str), f"conversations[{i}].value must be a string, "
                                         f"got {type(value).__name__}")
        messages.append({"role": role, "content": _split_placeholders(value)})

    def as_list(x: Any) -> list[str]:
        return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]

    return {"messages": messages, "images": as_list(record.get("image")), "videos": as_list(record.get("video"))}


def from_hf_content(record: dict[str, Any]) -> dict[str, Any]:
    """transformers-style messages whose image/video items carry their source inline
    (``{"type": "image", "image": "a.jpg"}``); sources move to ``images`` / ``videos``."""
    _require(isinstance(record, dict), f"expected a JSON object, got {type(record).__name__}")
    images, videos, messages = [], [], []
    given = record.get("messages", [])
    _require(isinstance(given, list), f"'messages' must be a list, got {type(given).__name__}")
    for i, msg in enumerate(given):
        _require(isinstance(msg, dict), f"messages[{i}]: must be an object, got {type(msg).__name__}")
        content = msg.get("content")
        if isinstance(content, list):
            new = []
            for j, item in enumerate(content):
                _require(isinstance(item, dict),
                         f"messages[{i}].content[{j}]: an item must be an object, got {type(item).__name__}")
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
    for msg in record.get("messages") or []:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list):
            n += sum(1 for item in content if isinstance(item, dict) and item.get("type") == kind)
    return n


ROLES = ("system", "user", "assistant")


def _message_reasons(messages: list[Any]) -> list[str]:
    """Structural problems of the messages (each reason names the message)."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return [f"message {i} is not an object ({type(m).__name__})"]
        if m.get("role") not in ROLES:
            return [f"message {i}: unknown role {m.get('role')!r} (expected one of {', '.join(ROLES)})"]
        content = m.get("content")
        if isinstance(content, list):
            bad = [j for j, item in enumerate(content) if not isinstance(item, dict)]
            if bad:
                return [f"message {i}: content item {bad[0]} is not an object"]
        elif not isinstance(content, str):
            return [f"message {i}: content must be a string or a list of items, got {type(content).__name__}"]
    return []


def validate(record: dict[str, Any], root: str | os.PathLike | None = None) -> list[str]:
    """Reasons this record cannot be trained on (empty list: valid)."""
    if not isinstance(record, dict):
        return [f"not a record ({type(record).__name__})"]
    reasons = []
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return ["no messages"]
    structure = _message_reasons(messages)
    if structure:
        return structure
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
        if not isinstance(sources, (list, tuple)):
            reasons.append(f"{key} must be a list, got {type(sources).__name__}")
            continue
        n = count_items(record, kind)
        if n != len(sources):
            reasons.append(f"{n} {kind} placeholder(s) but {len(sources)} {key}")
        for src in sources:
            if isinstance(src, str) and not src.startswith(("http://", "https://", "data:")):
                path = os.path.join(root, src) if root is not None and not os.path.isabs(src) else src
                if not os.path.exists(path):
                    reasons.append(f"{kind} file not found: {path}")
    return reasons
