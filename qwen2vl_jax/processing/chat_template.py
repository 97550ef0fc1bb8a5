"""Chat templates: the checkpoint's own Jinja template, or the built-in Qwen2-VL-Instruct one.

`chat_template=None` renders the built-in template in plain Python (docs/preprocessing.md): exactly
what transformers renders with the Jinja `chat_template` of the Instruct checkpoints (also in
transformers' `test_processor_qwen2_vl.py`), including its quirks: the default system prompt is
added only when the FIRST message is not a system message, picture / video numbering
(`add_vision_id`) runs over the whole conversation, and content items that are neither image,
video nor text are silently skipped.

A `chat_template` string (the checkpoint's `chat_template.json`, `chat_template.jinja` or
`tokenizer_config.json` entry) is rendered with Jinja as transformers renders it
(`jinja_template.py`). For training labels its assistant spans come from its
`{% generation %}` blocks when it has them (what transformers' `return_assistant_tokens_mask`
uses), else they are located in the rendered text: the k-th assistant message's span starts
where rendering the conversation up to it with `add_generation_prompt=True` ends (after the
assistant header) and ends at the last end-of-turn token (`eos_token`) that rendering the
message added; the text after it (the newline) is not trained.

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
DEFAULT_EOS_TOKEN = "<|im_end|>"

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
    chat_template: str | None = None,
    **template_kwargs: Any,
) -> list[ChatSegment]:
    """Render messages as segments; joining their texts gives `apply_chat_template` (the
    same arguments). `template_kwargs` reach a Jinja template as variables (the tokenizer's
    special tokens: `eos_token` is also the end of a located assistant span)."""
    if chat_template is not None:
        return _jinja_segments(messages, add_generation_prompt, add_vision_id, chat_template, template_kwargs)
    return _builtin_segments(messages, add_generation_prompt, add_vision_id)


def _builtin_segments(
    messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool, add_vision_id: bool
) -> list[ChatSegment]:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ValueError(  # noqa: TRY004 - bad input is a ValueError by contract
            f"messages must be a list of message dicts, got {type(messages).__name__}")
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
    chat_template: str | None = None,
    **template_kwargs: Any,
) -> str:
    """The prompt text for one conversation: `chat_template` rendered as transformers'
    `apply_chat_template(..., tokenize=False)` renders it (`template_kwargs` are template
    variables), or the built-in Qwen2-VL-Instruct template when it is None.

    Example: `[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]`
    with `add_generation_prompt=True` gives
    `<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n`
    `<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\\n<|im_start|>assistant\\n`.
    """
    if chat_template is not None:
        _check_messages(messages)
        return _render(chat_template, messages, add_generation_prompt, add_vision_id, template_kwargs)[0]
    return "".join(s.text for s in _builtin_segments(messages, add_generation_prompt, add_vision_id))


# ---------------------------------------------------------------------- a checkpoint's Jinja template


def _check_messages(messages: Any) -> None:
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise ValueError(  # noqa: TRY004 - bad input is a ValueError by contract
            f"messages must be a list of message dicts, got {type(messages).__name__}")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise ValueError(f"message {index}: must be a dict with a 'role' key")


def _render(template: str, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool,
            add_vision_id: bool, template_kwargs: Mapping[str, Any]) -> tuple[str, list[tuple[int, int]]]:
    from qwen2vl_jax.processing.jinja_template import render_chat_template

    kwargs = {"add_vision_id": add_vision_id, **template_kwargs}
    return render_chat_template(template, list(messages), add_generation_prompt=add_generation_prompt, **kwargs)


def _trained(message: Mapping[str, Any]) -> bool:
    return message.get("role") == "assistant" and bool(message.get(TRAIN_KEY, True))


def _jinja_segments(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool, add_vision_id: bool,
                    template: str, template_kwargs: Mapping[str, Any]) -> list[ChatSegment]:
    from qwen2vl_jax.processing.jinja_template import has_generation_blocks

    _check_messages(messages)
    text, generation = _render(template, messages, add_generation_prompt, add_vision_id, template_kwargs)
    assistant = [m for m in messages if m.get("role") == "assistant"]
    if has_generation_blocks(template):
        if len(generation) == len(assistant):  # one block per assistant message, in order
            spans = [span for span, m in zip(generation, assistant) if _trained(m)]
        elif all(_trained(m) for m in assistant):
            spans = generation
        else:
            raise ValueError(f"chat template rendered {len(generation)} {{% generation %}} block(s) for "
                             f"{len(assistant)} assistant message(s): cannot tell which to leave out "
                             f"('{TRAIN_KEY}': False)")
    else:
        eos = str(template_kwargs.get("eos_token") or DEFAULT_EOS_TOKEN)
        spans = _locate_assistant_spans(template, messages, text, add_vision_id, template_kwargs, eos)
    segments, position = [], 0
    for start, end in sorted(spans):
        if start < position:
            raise ValueError(f"chat template: overlapping assistant spans at character {start}")
        if start > position:
            segments.append(ChatSegment(text[position:start]))
        if end > start:
            segments.append(ChatSegment(text[start:end], trainable=True))
        position = end
    if position < len(text) or not segments:
        segments.append(ChatSegment(text[position:]))
    return segments


def _locate_assistant_spans(template: str, messages: Sequence[Mapping[str, Any]], text: str, add_vision_id: bool,
                            template_kwargs: Mapping[str, Any], eos: str) -> list[tuple[int, int]]:
    """Character spans of the trained assistant messages in `text` (see the module docstring)."""
    cache: dict[tuple[int, bool], str] = {}

    def upto(n: int, prompt: bool = False) -> str:
        if (n, prompt) not in cache:
            cache[n, prompt] = _render(template, messages[:n], prompt, add_vision_id, template_kwargs)[0]
        return cache[n, prompt]

    spans = []
    for i, message in enumerate(messages):
        if not _trained(message):
            continue
        before, prompted, through = upto(i), upto(i, True), upto(i + 1)
        header = prompted[len(before):] if prompted.startswith(before) else ""
        added = through[len(before):]
        at = added.find(header) if header else -1
        if not (text.startswith(through) and through.startswith(before)) or at < 0:
            raise ValueError(
                f"chat template: cannot locate assistant message {i} in the rendered conversation (rendering "
                "the conversation message by message does not give prefixes of it, or the generation prompt "
                "does not open the assistant turn); mark assistant output with {% generation %} blocks")
        start = len(before) + at + len(header)
        turn = through[start:]
        close = turn.rfind(eos)
        spans.append((start, start + (close + len(eos) if close >= 0 else len(turn))))
    return spans
