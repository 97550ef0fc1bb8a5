"""Per-patch metadata of the packed vision stream (numpy, host side).

* ``vision_position_ids``: (row, col) of every patch in merge-window order, the 2D rotary ids of
  transformers' ``Qwen2VisionTransformerPretrainedModel.rot_pos_emb``;
* ``vision_segment_ids``: one attention segment per temporal slice (the ``cu_seqlens`` blocks of
  ``Qwen2VisionTransformerPretrainedModel.forward``: frames of a video never attend to each other);
* ``vision_scatter_index``: which merged vision token fills which placeholder slot (the order of
  ``masked_scatter`` in ``Qwen2VLModel.forward``).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _as_grid(grid_thw: Any, name: str) -> np.ndarray:
    if grid_thw is None:
        return np.zeros((0, 3), dtype=np.int64)
    grid = np.asarray(grid_thw, dtype=np.int64)
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"{name} must have shape [n, 3] (t, h, w); got {grid.shape}")
    if (grid <= 0).any():
        raise ValueError(f"{name} has non-positive entries: {grid.tolist()}")
    return grid


def check_grid(grid_thw: Any, num_patches: int, merge_size: int, name: str = "image_grid_thw") -> np.ndarray:
    """Validate a grid against its ``pixel_values`` rows; returns it as int64[n, 3]."""
    grid = _as_grid(grid_thw, name)
    odd = [i for i, (_, h, w) in enumerate(grid) if h % merge_size or w % merge_size]
    if odd:
        raise ValueError(
            f"{name} rows {odd} have h or w not divisible by spatial_merge_size={merge_size}: "
            f"{grid[odd].tolist()}"
        )
    total = int(np.prod(grid, axis=1).sum())
    if total != num_patches:
        raise ValueError(
            f"{name} describes {total} patches (sum of t*h*w) but its pixel values have "
            f"{num_patches} rows"
        )
    return grid


def vision_position_ids(grid_thw: Any, merge_size: int) -> np.ndarray:
    """int32[N, 2]: (row, col) of each patch, in merge-window order, tiled over t (HF ``rot_pos_emb``)."""
    grid = _as_grid(grid_thw, "grid_thw")
    out = []
    m = merge_size
    for t, h, w in grid:
        rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
        cols = np.broadcast_to(np.arange(w)[None, :], (h, w))
        # [h, w] -> [h/m, m, w/m, m] -> [h/m, w/m, m, m]: the 4 patches of a window are adjacent.
        rows = rows.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
        cols = cols.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).reshape(-1)
        out.append(np.tile(np.stack([rows, cols], axis=-1), (t, 1)))
    if not out:
        return np.zeros((0, 2), dtype=np.int32)
    return np.concatenate(out).astype(np.int32)


def vision_segment_ids(grid_thw: Any, start: int = 0) -> np.ndarray:
    """int32[N]: segment k for the k-th temporal slice (h*w patches), counting from ``start``."""
    grid = _as_grid(grid_thw, "grid_thw")
    lengths = np.repeat(grid[:, 1] * grid[:, 2], grid[:, 0])
    return np.repeat(np.arange(start, start + len(lengths)), lengths).astype(np.int32)


def vision_scatter_index(input_ids: np.ndarray, image_token_id: int, video_token_id: int,
                         num_image_tokens: int, num_video_tokens: int) -> np.ndarray:
    """int32[B, S]: row of ``concat(image_feats, video_feats)`` for each placeholder, else -1.

    Placeholders are filled in row-major (batch, sequence) order, images first then videos, as
    torch's ``masked_scatter`` does (docs/numerics.md, Scatter order).
    """
    ids = np.asarray(input_ids)
    index = np.full(ids.shape, -1, dtype=np.int32)
    for token, count, offset, kind in ((image_token_id, num_image_tokens, 0, "image"),
                                       (video_token_id, num_video_tokens, num_image_tokens, "video")):
        slots = ids == token
        n = int(slots.sum())
        if n != count:
            raise ValueError(
                f"{kind} features and {kind} tokens do not match: input_ids hold {n} "
                f"<|{kind}_pad|> tokens (id {token}) but the {kind}s give {count} merged features"
            )
        index[slots] = offset + np.arange(n, dtype=np.int32)
    return index

