"""Canonical record -> tokenized training sample, on a host worker. Never raises on bad data.

``RecordPreprocessor(processor, ...)(record)`` returns ``{"sample": packing.Sample}`` or
``{"error": reason}``. Every way a record can be unusable (a source's ``_error`` marker, failed
validation, an image that does not decode, a placeholder count that does not match, a sample
longer than the text or patch budget) becomes a reason string, so the pipeline can skip the
record, count it by reason and go on: a bad record never kills a run.

Over-long samples (``overlong``): ``"skip"`` (default) rejects a sample over the text budget;
``"truncate"`` cuts text tokens from its end instead and keeps every vision span whole (from
``<|vision_start|>`` through ``<|vision_end|>``, so every image's pixel rows stay), returning
``{"sample": ..., "truncated": reason}``. A sample whose vision spans alone exceed the budget, or
that has no label left after the cut, is still skipped. Over the patch budget is always a skip.

Labels: ``"assistant"`` (SFT: the assistant turns and their ``<|im_end|>``, as the processor's
chat template marks them) or ``"all_text"`` (pre-training: every text token; vision
placeholders, padding and system turns, ``<|im_start|>system ... <|im_end|>`` wherever the
template puts them, are never predicted).
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
OVERLONG_MODES = ("skip", "truncate")


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
        max_tokens, max_patches: a sample above either can never be packed: skipped as bad
            (or, over ``max_tokens`` with ``overlong="truncate"``, cut to it).
        root: folder that relative image/video paths are resolved against.
        overlong: ``"skip"`` or ``"truncate"`` (see module docstring).
    """

    def __init__(self, processor: Any, *, labels: str = "assistant", max_tokens: int, max_patches: int,
                 root: str | None = None, overlong: str = "skip"):
        if labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
        if overlong not in OVERLONG_MODES:
            raise ValueError(f"overlong must be one of {OVERLONG_MODES}, got {overlong!r}")
        self.processor, self.labels, self.root, self.overlong = processor, labels, root, overlong
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
        truncated = None
        if len(ids) > self.max_tokens:
            if self.overlong == "skip":
                return {"error": f"too long: {len(ids)} tokens > the text budget {self.max_tokens}"}
            keep = self._truncation(ids)
            if isinstance(keep, str):
                return {"error": keep}
            truncated = f"truncated: {len(ids)} tokens -> the text budget {self.max_tokens}"
            ids, labels = ids[keep], labels[keep]
        sample = Sample(
            input_ids=ids, labels=labels,
            pixel_values=np.concatenate(pixels).astype(np.float32) if pixels else None,
            image_grid_thw=out.get("image_grid_thw"), video_grid_thw=out.get("video_grid_thw"),
        )
        if sample.num_patches > self.max_patches:
            return {"error": f"too many vision patches: {sample.num_patches} > the patch budget {self.max_patches}"}
        if not (labels != IGNORE_INDEX).any():
            after = " after truncation to the text budget" if truncated else ""
            return {"error": f"no token to learn from{after} (every label is masked)"}
        return {"sample": sample, "truncated": truncated} if truncated else {"sample": sample}

    def _truncation(self, ids: np.ndarray) -> np.ndarray | str:
        """Which tokens a truncated sample keeps (a bool mask), or the reason it cannot be cut."""
        tok = self.processor.tokenizer
        vision = vision_spans(ids, tok.vision_start_token_id, tok.vision_end_token_id)
        if vision is None:
            return "unbalanced <|vision_start|> / <|vision_end|> markers"
        room = self.max_tokens - int(vision.sum())
        if room < 0:
            return (f"too long even truncated: its vision spans alone take {int(vision.sum())} tokens "
                    f"> the text budget {self.max_tokens}")
        # The first `room` text tokens stay, every vision span stays: the text's tail is cut.
        return vision | (np.cumsum(~vision) <= room)

    def _all_text_labels(self, ids: np.ndarray) -> np.ndarray:
        tok = self.processor.tokenizer
        never = [i for i in (tok.image_token_id, tok.video_token_id, tok.token_to_id("<|endoftext|>"))
                 if i is not None]
        labels = np.where(np.isin(ids, never), IGNORE_INDEX, ids)
        # System turns (the built-in template opens with the default one when the record has none):
        # boilerplate, not data, so they are not learned. Found by their ChatML markers, not by
        # position, since a checkpoint's template may have no system turn or several.
        labels[self._system_turns(ids)] = IGNORE_INDEX
        return labels.astype(np.int32)

    def _system_turns(self, ids: np.ndarray) -> np.ndarray:
        tok = self.processor.tokenizer
        mask = np.zeros(len(ids), bool)
        start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
        if start is None or end is None:
            return mask
        role = np.asarray(tok.encode("system"))
        ends = np.flatnonzero(ids == end)
        for p in np.flatnonzero(ids == start):
            if np.array_equal(ids[p + 1 : p + 1 + len(role)], role):
                after = ends[ends > p]
                mask[p : after[0] + 1 if len(after) else len(ids)] = True
        return mask


def vision_spans(ids: np.ndarray, start_id: int, end_id: int) -> np.ndarray | None:
    """Bool mask of the tokens from each ``<|vision_start|>`` through its ``<|vision_end|>``;
    None when the markers do not pair up (nested, unclosed or unopened)."""
    starts, ends = ids == start_id, ids == end_id
    depth = np.cumsum(starts.astype(np.int64) - ends)
    if len(ids) and (depth.min() < 0 or depth.max() > 1 or depth[-1] != 0):
        return None
    return (depth > 0) | ends
