"""HF-style model inputs -> the fixed arrays the jitted model consumes (numpy, host side)."""

from __future__ import annotations

from typing import Any

import numpy as np

from qwen2vl_jax.layout.rope_index import position_ids_for
from qwen2vl_jax.layout.vision import (
    check_grid,
    vision_position_ids,
    vision_scatter_index,
    vision_segment_ids,
)

# The arrays the jitted model consumes (everything else in a batch dict is bookkeeping).
MODEL_INPUT_KEYS = ("input_ids", "position_ids", "segment_ids", "pixel_values", "vision_pos",
                    "vision_segment_ids", "scatter_index")

# Labels of positions that take no loss (transformers' ``CrossEntropyLoss(ignore_index=-100)``).
IGNORE_INDEX = -100


def prepare_model_inputs(
    cfg: Any,
    input_ids: Any,
    attention_mask: Any = None,
    pixel_values: Any = None,
    image_grid_thw: Any = None,
    pixel_values_videos: Any = None,
    video_grid_thw: Any = None,
) -> dict[str, np.ndarray]:
    """HF-style inputs -> the fixed arrays the jitted model consumes (all numpy).

    Returns ``input_ids`` int32[B, S], ``position_ids`` int32[3, B, S], ``segment_ids``
    int32[B, S] (1 = real token, 0 = padding; causal attention stays inside a segment),
    ``rope_deltas`` int32[B, 1] and, when there are images or videos, ``pixel_values``
    float32[N, 1176] (images then videos, one packed stream), ``vision_pos`` int32[N, 2],
    ``vision_segment_ids`` int32[N] and ``scatter_index`` int32[B, S].
    """
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq]; got shape {ids.shape}")
    mask = None if attention_mask is None else np.asarray(attention_mask).reshape(ids.shape)
    merge = cfg.vision.spatial_merge_size
    patch_dim = cfg.vision.patch_dim
    streams, grids = [], []
    for name, pix, grid_name, grid in (("pixel_values", pixel_values, "image_grid_thw", image_grid_thw),
                                       ("pixel_values_videos", pixel_values_videos, "video_grid_thw",
                                        video_grid_thw)):
        if pix is None:
            if grid is not None and len(np.asarray(grid)):
                raise ValueError(f"{grid_name} was given without {name}")
            grids.append(np.zeros((0, 3), dtype=np.int64))
            continue
        pix = np.asarray(pix, dtype=np.float32)
        if pix.ndim != 2 or pix.shape[1] != patch_dim:
            raise ValueError(f"{name} must be [num_patches, {patch_dim}]; got {pix.shape}")
        if grid is None:
            raise ValueError(f"{name} was given without {grid_name}")
        grids.append(check_grid(grid, pix.shape[0], merge, grid_name))
        streams.append(pix)
    image_grid, video_grid = grids
    # Count check first: it gives the clearest message for a placeholder/feature mismatch.
    n_img = int(np.prod(image_grid, axis=1).sum()) // merge**2
    n_vid = int(np.prod(video_grid, axis=1).sum()) // merge**2
    scatter = vision_scatter_index(ids, cfg.image_token_id, cfg.video_token_id, n_img, n_vid)
    position_ids, deltas = position_ids_for(
        cfg, ids, image_grid if len(image_grid) else None, video_grid if len(video_grid) else None, mask)
    out = {
        "input_ids": ids.astype(np.int32),
        "position_ids": position_ids.astype(np.int32),
        "segment_ids": (np.ones(ids.shape) if mask is None else mask).astype(np.int32),
        "rope_deltas": deltas.astype(np.int32),
    }
    if streams:
        grid_all = np.concatenate([image_grid, video_grid])
        out["pixel_values"] = np.concatenate(streams)
        out["vision_pos"] = vision_position_ids(grid_all, merge)
        out["vision_segment_ids"] = vision_segment_ids(grid_all)
        out["scatter_index"] = scatter
    return out




def dummy_bucketed_batch(cfg: Any, batch: int, text_len: int, patches: int | None) -> dict[str, np.ndarray]:
    """Zero arrays with exactly the shapes and dtypes of a bucketed batch (for AOT compiles)."""
    out = {
        "input_ids": np.zeros((batch, text_len), np.int32), "position_ids": np.zeros((3, batch, text_len), np.int32),
        "segment_ids": np.zeros((batch, text_len), np.int32), "rope_deltas": np.zeros((batch, 1), np.int32),
    }
    if patches is not None:
        out.update(pixel_values=np.zeros((patches, cfg.vision.patch_dim), np.float32),
                   vision_pos=np.zeros((patches, 2), np.int32), vision_segment_ids=np.zeros((patches,), np.int32),
                   scatter_index=np.zeros((batch, text_len), np.int32))
    return out
