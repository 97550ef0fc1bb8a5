"""Fixed-shape buckets: pad a batch to the smallest configured shapes that fit (numpy).

Every distinct input shape is a new XLA program, so no shape may depend on an image's
resolution: text is left-padded to a text bucket, the batch to a batch bucket, and the packed
patch stream to a patch bucket (``RuntimeConfig.buckets``).

Padding patches never share a segment with real ones, and each aligned run of
``PAD_SEGMENT_PATCHES`` of them is a segment of its own: block-skipping attention then visits
one block per padding block instead of the padding's whole square.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Padding patches form one segment per aligned run of this many stream positions (a divisor of
# the attention blocks: ops/blocked_attention.py's 128 and 64 chunks, the kernels' blocks).
PAD_SEGMENT_PATCHES = 64


def choose_bucket(size: int, buckets: tuple[int, ...], what: str) -> int:
    """The smallest bucket >= size; a clear error if none fits."""
    for b in buckets:
        if b >= size:
            return b
    raise ValueError(
        f"{what} of {size} exceeds the largest configured bucket ({buckets[-1]}); add a larger "
        f"bucket to RuntimeConfig.buckets or send a smaller input"
    )


def bucket_model_inputs(cfg: Any, buckets: Any, batch: dict[str, np.ndarray], *, text_len: int | None = None,
                        batch_size: int | None = None, num_patches: int | None = None
                        ) -> dict[str, np.ndarray]:
    """Pad a ``prepare_model_inputs`` batch to bucket shapes (text on the LEFT, so every row's
    last real token sits at S-1; extra batch rows are all padding; the patch stream gets
    padding patches in a segment of their own). Real tokens' results are unchanged: padding is
    masked out by segment ids. Sizes default to the smallest of ``buckets`` (a
    ``BucketConfig``) that fit; ``cfg`` is the architecture (merge size).
    """
    b, s = batch["input_ids"].shape
    S = text_len or choose_bucket(s, buckets.text_buckets, "text length")
    B = batch_size or choose_bucket(b, buckets.batch_buckets, "batch size")
    if S < s or B < b:
        raise ValueError(f"bucket ({B}, {S}) is smaller than the batch ({b}, {s})")
    ds, db = S - s, B - b

    def pad_text(x: np.ndarray, value: int) -> np.ndarray:  # [..., b, s] -> [..., B, S]
        widths = [(0, 0)] * (x.ndim - 2) + [(0, db), (ds, 0)]
        return np.pad(x, widths, constant_values=value)

    out = {
        "input_ids": pad_text(batch["input_ids"], 0),
        "segment_ids": pad_text(batch["segment_ids"], 0),
        "position_ids": pad_text(batch["position_ids"], 1),  # HF fills padded slots with 1
        # delta = max(pos) + 1 - padded length: left padding shifts it by the added columns.
        "rope_deltas": np.pad(batch["rope_deltas"] - ds, [(0, db), (0, 0)]),
    }
    if "pixel_values" in batch:
        n = batch["pixel_values"].shape[0]
        merge2 = cfg.vision.spatial_merge_size**2
        P = num_patches or choose_bucket(n, buckets.patch_buckets, "number of vision patches")
        if P < n or P % merge2:
            raise ValueError(f"patch bucket {P} must be >= {n} and a multiple of {merge2}")
        pad = P - n
        seg = batch["vision_segment_ids"]
        out["pixel_values"] = np.pad(batch["pixel_values"], [(0, pad), (0, 0)])
        out["vision_pos"] = np.pad(batch["vision_pos"], [(0, pad), (0, 0)])
        # Padding patches: segments of their own, never attended by (or attending) real ones.
        pad_ids = padding_segment_ids(n, P, int(seg.max(initial=-1)) + 1)
        out["vision_segment_ids"] = np.concatenate([seg, pad_ids]).astype(np.int32)
        out["scatter_index"] = pad_text(batch["scatter_index"], -1)
    return out


def padding_segment_ids(start: int, stop: int, first_id: int) -> np.ndarray:
    """int32 ids of stream positions ``start .. stop - 1``: ``first_id`` for the partial run up to
    the next multiple of PAD_SEGMENT_PATCHES, then one more per aligned run (non-decreasing)."""
    pos = np.arange(start, stop)
    return (first_id + pos // PAD_SEGMENT_PATCHES - start // PAD_SEGMENT_PATCHES).astype(np.int32)
