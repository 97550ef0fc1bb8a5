"""Token ids + training labels for a conversation: loss on assistant turns only.

Labels are aligned with `input_ids` (not shifted; the loss shifts them) and are -100 (ignored)
everywhere except the content of each assistant message and its closing `<|im_end|>`, so the
model learns to stop. An assistant message with `"train": False` is masked too (e.g. earlier
turns that should only be context). The whole conversation is tokenized in ONE call and labels
are assigned from character offsets, so BPE merges across segment borders cannot shift them.

With a checkpoint's own `chat_template` the assistant spans are its `{% generation %}` blocks, or
located in the rendered text (`chat_template.render_chat_segments`); a token is labelled when it
starts inside a span.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qwen2vl_jax.layout.inputs import IGNORE_INDEX
from qwen2vl_jax.processing.chat_template import ChatSegment, render_chat_segments
from qwen2vl_jax.processing.placeholders import expand_placeholders, tokens_per_item
from qwen2vl_jax.processing.tokenizer import IMAGE_TOKEN, VIDEO_TOKEN, Qwen2VLTokenizer


def tokenize_chat_for_training(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Qwen2VLTokenizer,
    image_grid_thw: np.ndarray | None = None,
    video_grid_thw: np.ndarray | None = None,
    merge_size: int = 2,
    add_vision_id: bool = False,
    chat_template: str | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Render, expand vision placeholders and tokenize one conversation.

    Args:
        image_grid_thw, video_grid_thw: int[n, 3] grids of this conversation's images/videos,
            in order (from the image/video processors); each placeholder is expanded to
            t*h*w/merge_size**2 tokens.
        chat_template: the checkpoint's Jinja template (None: the built-in Instruct template);
            template_kwargs: its extra variables (the tokenizer's special tokens).

    Returns:
        {"input_ids": int64[L], "labels": int64[L], "attention_mask": int64[L]}.

    Raises:
        ValueError: placeholder count differs from the number of grids.
    """
    segments = render_chat_segments(messages, add_generation_prompt=False, add_vision_id=add_vision_id,
                                    chat_template=chat_template, **dict(template_kwargs or {}))
    texts = [s.text for s in segments]
    texts = expand_placeholders(texts, IMAGE_TOKEN, tokens_per_item(image_grid_thw, merge_size), "image")
    texts = expand_placeholders(texts, VIDEO_TOKEN, tokens_per_item(video_grid_thw, merge_size), "video")
    spans, position = [], 0
    for segment, text in zip(segments, texts, strict=True):
        if segment.trainable:
            spans.append((position, position + len(text)))
        position += len(text)
    ids, offsets = tokenizer.encode_with_offsets("".join(texts))
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
    for i, (start, _) in enumerate(offsets):
        # A token belongs to the segment where it starts.
        if any(lo <= start < hi for lo, hi in spans):
            labels[i] = ids[i]
    input_ids = np.asarray(ids, dtype=np.int64)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": np.ones_like(input_ids)}


__all__ = ["IGNORE_INDEX", "ChatSegment", "tokenize_chat_for_training"]
