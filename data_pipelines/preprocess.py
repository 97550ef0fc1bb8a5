"""Canonical record -> tokenized training sample, on a host worker. Never raises on bad data.

``RecordPreprocessor(processor, ...)(record)`` returns ``{"sample": packing.Sample}`` or
``{"error": reason}``. Every way a record can be unusable (a source's ``_error`` marker, failed
validation, an image that does not decode, a placeholder count that does not match, a sample
longer than the text or patch budget) becomes a reason string, so the pipeline can skip the
record, count it by reason and go on: a bad record never kills a run.

Labels: ``"assistant"`` (SFT: the assistant turns and their ``<|im_end|>``) or ``"all_text"``
(pre-training: every text token; vision placeholders, padding and the system prompt are never
predicted).
"""

from __future__ import annotations

import io
import os
import re
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps

from data_pipelines.formats import validate
from qwen2vl_jax.layout.packing import IGNORE_INDEX, Sample

LABEL_MODES = ("assistant", "all_text")


def open_image(src: Any, root: str | None) -> Any:
    """Bytes and paths become RGB-ready PIL images (EXIF orientation applied, like the reference's
    ``load_image``); PIL images and arrays pass through."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        img = PIL.Image.open(io.BytesIO(bytes(src)))
        img = PIL.ImageOps.exif_transpose(img)
        img.load()
        return img
    if isinstance(src, (str, os.PathLike)):
        path = os.path.join(root, src) if root and not os.path.isabs(src) else src
        with open(path, "rb") as f:
            return open_image(f.read(), None)
    return src


def reason_key(reason: str) -> str:
    """Counter key of a skip reason: numbers and paths vary per record, the category does not."""
    key = re.sub(r"\S*/\S*", "<path>", reason)
    return re.sub(r"\d+", "#", key)[:120]


def reason_of(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]


class RecordPreprocessor:
    """A picklable callable (grain ships it to worker processes).

    Args:
        processor: a ``Qwen2VLProcessor`` (image/video processors + tokenizer + chat template).
        labels: ``"assistant"`` or ``"all_text"`` (see module docstring).
        max_tokens, max_patches: a sample above either can never be packed: skipped as bad.
        root: folder that relative image/video paths are resolved against.
    """

    def __init__(self, processor: Any, *, labels: str = "assistant", max_tokens: int, max_patches: int,
                 root: str | None = None):
        if labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
        self.processor, self.labels, self.root = processor, labels, root
        self.max_tokens, self.max_patches = max_tokens, max_patches

    def __call__(self, record: Any) -> dict[str, Any]:
        try:
            return self._process(record)
        except Exception as exc:  # noqa: BLE001 - any failure is a counted skip, by design
            return {"error": reason_of(exc)}

    def _process(self, record: Any) -> dict[str, Any]:
        if not isinstance(record, dict):
            return {"error": f"not a record: {type(record).__name__}"}
        if record.get("_error"):
            return {"error": str(record["_error"])}
        reasons = validate(record, self.root)
        if reasons:
            return {"error": "; ".join(reasons)}
        images = [open_image(x, self.root) for x in record.get("images") or []]
        videos = [os.path.join(self.root, v) if self.root and isinstance(v, str) and not os.path.isabs(v) else v
                  for v in record.get("videos") or []]
        out = self.processor.tokenize_for_training(record["messages"], images=images or None,
                                                   videos=videos or None)
        ids = np.asarray(out["input_ids"], np.int32)
        if self.labels == "assistant":
            labels = np.asarray(out["labels"], np.int32)
        else:
            labels = self._all_text_labels(ids)
        pixels = [out[k] for k in ("pixel_values", "pixel_values_videos") if k in out]
        sample = Sample(
            input_ids=ids, labels=labels,
            pixel_values=np.concatenate(pixels).astype(np.float32) if pixels else None,
            image_grid_thw=out.get("image_grid_thw"), video_grid_thw=out.get("video_grid_thw"),
        )
        if sample.num_tokens > self.max_tokens:
            return {"error": f"too long: {sample.num_tokens} tokens > the text budget {self.max_tokens}"}
        if sample.num_patches > self.max_patches:
            return {"error": f"too many vision patches: {sample.num_patches} > the patch budget {self.max_patches}"}
        if not (labels != IGNORE_INDEX).any():
            return {"error": "no token to learn from (every label is masked)"}
        return {"sample": sample}

    def _all_text_labels(self, ids: np.ndarray) -> np.ndarray:
        tok = self.processor.tokenizer
        never = [i for i in (tok.image_token_id, tok.video_token_id, tok.token_to_id("<|endoftext|>"))
                 if i is not None]
        labels = np.where(np.isin(ids, never), IGNORE_INDEX, ids)
        # The chat template always opens with a system turn (the default one when the record has
        # none): boilerplate, not data, so it is not learned.
        ends = np.flatnonzero(ids == tok.token_to_id("<|im_end|>"))
        if len(ends):
            labels[: ends[0] + 1] = IGNORE_INDEX
        return labels.astype(np.int32)
