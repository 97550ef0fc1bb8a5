"""The Qwen2-VL-Instruct chat template (docs/preprocessing.md), in plain Python.

Produces exactly what transformers renders with the Jinja `chat_template` of the Instruct
checkpoints (also in transformers' `test_processor_qwen2_vl.py`), including its quirks: the
default system prompt is added only when the FIRST message is not a system message, picture /
video numbering (`add_vision_id`) runs over the whole conversation, and content items that are
neither image, video nor text are silently skipped.

Messages look like::

    {"role": "user", "content": "plain text"}
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}
    {"role": "assistant", "content": "...", "train": False}   # "train": see below

`"train"` is ours, not the template's: it only matters for training labels
(`training_labels.py`); assistant messages are trained on unless `"train": False`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
VISION_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VISION_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
TRAIN_KEY = "train"

# The Jinja source, for saving a checkpoint that transformers can load with the same behaviour.
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class ChatSegment:
    """A piece of the rendered prompt. `trainable` marks text whose tokens get labels: an
    assistant message's content and its closing `<|im_end|>` (not its header, not the
    newline after `<|im_end|>`)."""

    text: str
    trainable: bool = False


def _render_content(content: Any, counters: dict[str, int], add_vision_id: bool, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, Sequence):
        raise ValueError(  # noqa: TRY004 - bad input is a ValueError by contract
            f"{where}: 'content' must be a string or a list of items, got {type(content).__name__}"
        )
    parts = []
    for item_index, item in enumerate(content):
        if not isinstance(item, Mapping):
            raise ValueError(  # noqa: TRY004 - bad input is a ValueError by contract
                f"{where}, item {item_index}: content items must be dicts, got {type(item).__name__}"
            )
        kind = item.get("type")
        if kind == "image" or "image" in item or "image_url" in item:
            counters["image"] += 1
            parts.append((f"Picture {counters['image']}: " if add_vision_id else "") + VISION_IMAGE)
        elif kind == "video" or "video" in item:
            counters["video"] += 1
            parts.append((f"Video {counters['video']}: " if add_vision_id else "") + VISION_VIDEO)
        elif "text" in item:
            parts.append(str(item["text"]))
    return "".join(parts)


def render_chat_segments(
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    add_vision_id: bool = False,
) -> list[ChatSegment]:
    """Render messages as segments; joining their texts gives `apply_chat_template`."""
    segments: list[ChatSegment] = []
    counters = {"image": 0, "video": 0}
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"message {index}: needs 'role' and 'content' keys")
        role = str(message["role"])
        if index == 0 and role != "system":
            segments.append(ChatSegment(f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"))
        body = _render_content(message["content"], counters, add_vision_id, f"message {index}")
        trainable = role == "assistant" and bool(message.get(TRAIN_KEY, True))
        segments.append(ChatSegment(f"<|im_start|>{role}\n"))
        segments.append(ChatSegment(body + "<|im_end|>", trainable))
        segments.append(ChatSegment("\n"))
    if add_generation_prompt:
        segments.append(ChatSegment("<|im_start|>assistant\n"))
    return segments


def apply_chat_template(
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    add_vision_id: bool = False,
) -> str:
    """The Qwen2-VL-Instruct prompt text for one conversation.

    Example: `[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]`
    with `add_generation_prompt=True` gives
    `<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n`
    `<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\\n<|im_start|>assistant\\n`.
    """
    return "".join(s.text for s in render_chat_segments(messages, add_generation_prompt, add_vision_id))
