"""M-RoPE position ids of a mixed text / image / video sequence (numpy, host side).

``get_rope_index`` is the ORIGINAL rule of transformers <= 5.2 (``Qwen2VLModel.get_rope_index``
in 4.57.6), which the released checkpoints were trained with; transformers >= 5.3 changed it for
videos with more temporal than spatial patches. docs/mrope.md works an example through.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qwen2vl_jax.layout.vision import _as_grid


def get_rope_index(
    input_ids: np.ndarray,
    image_grid_thw: Any = None,
    video_grid_thw: Any = None,
    attention_mask: np.ndarray | None = None,
    *,
    spatial_merge_size: int,
    image_token_id: int,
    video_token_id: int,
    vision_start_token_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """M-RoPE positions int64[3, B, S] and rope deltas int64[B, 1] (original rule; docs/mrope.md).

    Text continues at max(previous)+1; a vision block of LLM grid (T', H', W') starting at
    ``base`` gets (base+t, base+h, base+w); the next text starts at base + max(T', H', W').
    Padded slots hold 1 (they are masked). ``delta = max(pos) + 1 - padded_length`` per row.
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq]; got shape {ids.shape}")
    b, s = ids.shape
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    image_grid = _as_grid(image_grid_thw, "image_grid_thw")
    video_grid = _as_grid(video_grid_thw, "video_grid_thw")

    if len(image_grid) == 0 and len(video_grid) == 0:
        return text_position_ids(ids, attention_mask)

    position_ids = np.ones((3, b, s), dtype=np.int64)
    deltas = np.zeros((b, 1), dtype=np.int64)
    image_index = video_index = 0
    m = spatial_merge_size
    for i in range(b):
        tokens = ids[i][mask[i] == 1]
        starts = np.flatnonzero(tokens[:-1] == vision_start_token_id)
        following = tokens[starts + 1]
        remain_images = int((following == image_token_id).sum())
        remain_videos = int((following == video_token_id).sum())
        token_list = tokens.tolist()
        chunks: list[np.ndarray] = []
        next_pos = 0  # max(previous positions) + 1
        st = 0
        for _ in range(remain_images + remain_videos):
            ed_image = _find(token_list, image_token_id, st) if remain_images > 0 else len(token_list) + 1
            ed_video = _find(token_list, video_token_id, st) if remain_videos > 0 else len(token_list) + 1
            if ed_image < ed_video:
                grid, image_index, remain_images, ed = image_grid, image_index + 1, remain_images - 1, ed_image
                which = image_index - 1
                if which >= len(grid):
                    raise ValueError(f"input_ids row {i} has more images than image_grid_thw rows ({len(grid)})")
            else:
                grid, video_index, remain_videos, ed = video_grid, video_index + 1, remain_videos - 1, ed_video
                which = video_index - 1
                if which >= len(grid):
                    raise ValueError(f"input_ids row {i} has more videos than video_grid_thw rows ({len(grid)})")
            t, h, w = (int(x) for x in grid[which])
            gt, gh, gw = t, h // m, w // m
            text_len = ed - st
            chunks.append(np.broadcast_to(np.arange(text_len) + next_pos, (3, text_len)))
            base = next_pos + text_len
            ti, hi, wi = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
            vision = np.stack([ti.reshape(-1), hi.reshape(-1), wi.reshape(-1)]) + base
            chunks.append(vision)
            # HF continues from the max of the LAST chunk (this vision block): base + max(T',H',W').
            next_pos = int(vision.max()) + 1
            st = ed + gt * gh * gw
            if st > len(token_list) or any(tok != token_list[ed] for tok in token_list[ed:st]):
                kind = "image" if grid is image_grid else "video"
                raise ValueError(
                    f"input_ids row {i}: {kind} {which} with grid {[t, h, w]} needs {gt * gh * gw} "
                    f"consecutive placeholder tokens at position {ed}, but the run there is shorter"
                )
        if st < len(token_list):
            text_len = len(token_list) - st
            chunks.append(np.broadcast_to(np.arange(text_len) + next_pos, (3, text_len)))
        positions = np.concatenate(chunks, axis=1) if chunks else np.zeros((3, 0), dtype=np.int64)
        position_ids[:, i, mask[i] == 1] = positions
        deltas[i, 0] = (positions.max() + 1 if positions.size else 0) - s
    return position_ids, deltas


def _find(tokens: list[int], token: int, start: int) -> int:
    try:
        return tokens.index(token, start)
    except ValueError:
        return len(tokens) + 1


def text_position_ids(input_ids: np.ndarray, attention_mask: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """1D positions int64[3, B, S] (0, 1, 2, ... over each row's real tokens, vision tokens
    included; left padding excluded, as ``get_rope_index`` treats text; padded slots 1) and the
    matching ``rope_deltas`` [B, 1]: the ``rope_1d`` ablation, and M-RoPE of a text-only row."""
    ids = np.asarray(input_ids)
    b, s = ids.shape
    if attention_mask is None:
        return np.broadcast_to(np.arange(s), (3, b, s)).astype(np.int64).copy(), np.zeros((b, 1), np.int64)
    mask = np.asarray(attention_mask)
    pos1 = np.where(mask == 0, 1, np.cumsum(mask, axis=-1) - 1)
    deltas = pos1.max(axis=-1, keepdims=True) + 1 - s
    return np.broadcast_to(pos1, (3, b, s)).astype(np.int64).copy(), deltas.astype(np.int64)


def position_ids_for(cfg: Any, input_ids: np.ndarray, image_grid_thw: Any = None, video_grid_thw: Any = None,
                     attention_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's position ids and rope deltas under ``cfg.text.position_encoding``."""
    if getattr(cfg.text, "position_encoding", "mrope") != "mrope":
        return text_position_ids(input_ids, attention_mask)
    return get_rope_index(input_ids, image_grid_thw, video_grid_thw, attention_mask,
                          spatial_merge_size=cfg.vision.spatial_merge_size, image_token_id=cfg.image_token_id,
                          video_token_id=cfg.video_token_id, vision_start_token_id=cfg.vision_start_token_id)
