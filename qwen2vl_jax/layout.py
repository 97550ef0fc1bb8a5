"""Host-side layout metadata, in numpy (no jax): everything that depends on image sizes.

The compiled model only ever sees fixed-shape arrays computed here:
  * ``get_rope_index``: M-RoPE position ids [3, B, S] and per-row ``rope_deltas`` (spec §3.3,
    the ORIGINAL rule of transformers <= 5.2 that the released checkpoints were trained with);
  * ``vision_position_ids``: (row, col) of every patch in merge-window order (spec §2.2);
  * ``vision_segment_ids``: one attention segment per temporal slice (spec §2.5);
  * ``vision_scatter_index``: which merged vision token fills which placeholder slot (spec §2.7).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The arrays the jitted model consumes (everything else in a batch dict is bookkeeping).
MODEL_INPUT_KEYS = ("input_ids", "position_ids", "segment_ids", "pixel_values", "vision_pos",
                    "vision_segment_ids", "scatter_index")


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
    """int32[N, 2]: (row, col) of each patch, in merge-window order, tiled over t (spec §2.2)."""
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
    torch's ``masked_scatter`` does (spec §2.7).
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
    """M-RoPE positions int64[3, B, S] and rope deltas int64[B, 1] (spec §3.3, original rule).

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
        if attention_mask is None:
            pos = np.broadcast_to(np.arange(s), (3, b, s)).copy()
            return pos, np.zeros((b, 1), dtype=np.int64)
        pos1 = np.cumsum(mask, axis=-1) - 1
        pos1 = np.where(mask == 0, 1, pos1)
        pos = np.broadcast_to(pos1, (3, b, s)).astype(np.int64).copy()
        deltas = pos1.max(axis=-1, keepdims=True) + 1 - s
        return pos, deltas.astype(np.int64)

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
    position_ids, deltas = get_rope_index(
        ids, image_grid if len(image_grid) else None, video_grid if len(video_grid) else None, mask,
        spatial_merge_size=merge, image_token_id=cfg.image_token_id,
        video_token_id=cfg.video_token_id, vision_start_token_id=cfg.vision_start_token_id,
    )
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


# ---------------------------------------------------------------------- fixed-shape buckets


def choose_bucket(size: int, buckets: tuple[int, ...], what: str) -> int:
    """The smallest bucket >= size; a clear error if none fits."""
    for b in buckets:
        if b >= size:
            return b
    raise ValueError(
        f"{what} of {size} exceeds the largest configured bucket ({buckets[-1]}); add a larger "
        f"bucket to ModelConfig.buckets or send a smaller input"
    )


def bucket_model_inputs(cfg: Any, batch: dict[str, np.ndarray], *, text_len: int | None = None,
                        batch_size: int | None = None, num_patches: int | None = None
                        ) -> dict[str, np.ndarray]:
    """Pad a ``prepare_model_inputs`` batch to bucket shapes (text on the LEFT, so every row's
    last real token sits at S-1; extra batch rows are all padding; the patch stream gets
    padding patches in a segment of their own). Real tokens' results are unchanged: padding is
    masked out by segment ids. Sizes default to the smallest configured buckets that fit.
    """
    b, s = batch["input_ids"].shape
    buckets = cfg.buckets
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
        # Padding patches: one segment of their own, never attended by (or attending) real ones.
        out["vision_segment_ids"] = np.pad(seg, (0, pad), constant_values=int(seg.max(initial=-1)) + 1)
        out["scatter_index"] = pad_text(batch["scatter_index"], -1)
    return out
