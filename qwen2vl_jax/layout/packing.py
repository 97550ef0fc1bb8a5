"""First-fit packing of training samples into fixed (rows x text budget, patch budget) batches.

Several samples share a row; each gets its own segment id (1, 2, ... in the row; 0 is padding),
so decoder attention is causal *and* same-segment, and its own M-RoPE positions, computed for
the sample alone (they restart at 0). All images and videos of the batch form one patch stream
padded to the patch budget, one segment per temporal slice, padding last in its own segment.
The result has exactly the arrays ``layout.prepare_model_inputs`` produces, plus ``labels``, at
shapes that never change, so a whole training run compiles one step.

Numpy only; the data pipeline calls this on host workers. ``pixel_values`` may travel in the
compute dtype (``pixel_dtype="bfloat16"``, via ml_dtypes): the vision tower's first op casts its
input to that dtype anyway, so the model sees the same bits at half the host memory.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from qwen2vl_jax.layout.inputs import IGNORE_INDEX
from qwen2vl_jax.layout.rope_index import get_rope_index
from qwen2vl_jax.layout.vision import check_grid, vision_position_ids, vision_segment_ids


PIXEL_DTYPES = ("float32", "bfloat16")


def pixel_dtype_of(name: Any) -> np.dtype:
    """``"float32"`` / ``"bfloat16"`` (or such a numpy dtype) -> the numpy dtype of packed pixels."""
    key = name if isinstance(name, str) else np.dtype(name).name
    if key not in PIXEL_DTYPES:
        raise ValueError(f"pixel dtype must be one of {PIXEL_DTYPES}, got {name!r}")
    if key == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(np.float32)


@dataclasses.dataclass(frozen=True)
class PackingVision:
    spatial_merge_size: int
    patch_dim: int


@dataclasses.dataclass(frozen=True)
class PackingConfig:
    """The few model-config fields ``pack`` reads (same attribute paths as ``ModelConfig``): small
    and plain, so host worker processes get it without the model's modules."""

    vision: PackingVision
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int

    @classmethod
    def of(cls, cfg: Any) -> PackingConfig:
        return cls(PackingVision(int(cfg.vision.spatial_merge_size), int(cfg.vision.patch_dim)),
                   int(cfg.image_token_id), int(cfg.video_token_id), int(cfg.vision_start_token_id))


@dataclasses.dataclass
class Sample:
    """One tokenized example: ids and labels [n] (labels -100 where no loss), and its vision
    inputs: ``pixel_values`` [N, 1176] holding its images' patches then its videos' patches."""

    input_ids: np.ndarray
    labels: np.ndarray
    pixel_values: np.ndarray | None = None
    image_grid_thw: np.ndarray | None = None
    video_grid_thw: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def num_patches(self) -> int:
        return 0 if self.pixel_values is None else int(self.pixel_values.shape[0])


@dataclasses.dataclass
class PackPlan:
    rows: list[list[int]]  # sample indices per row, in order
    deferred: list[int]  # fit the budgets but not this batch: carry to the next one
    rejected: list[tuple[int, str]]  # can never fit: (index, reason)


def first_fit(samples: list[Sample], num_rows: int, text_budget: int, patch_budget: int) -> PackPlan:
    """Place each sample, in order, into the first row with room for its tokens, while the
    batch's shared patch budget lasts."""
    rows: list[list[int]] = [[] for _ in range(num_rows)]
    free = [text_budget] * num_rows
    patches_left = patch_budget
    deferred, rejected = [], []
    for i, s in enumerate(samples):
        if s.num_tokens > text_budget:
            rejected.append((i, f"{s.num_tokens} tokens exceed the text budget of {text_budget}"))
            continue
        if s.num_patches > patch_budget:
            rejected.append((i, f"{s.num_patches} vision patches exceed the patch budget of {patch_budget}"))
            continue
        row = next((r for r in range(num_rows) if free[r] >= s.num_tokens), None)
        if row is None or s.num_patches > patches_left:
            deferred.append(i)
            continue
        rows[row].append(i)
        free[row] -= s.num_tokens
        patches_left -= s.num_patches
    return PackPlan(rows, deferred, rejected)


def pack(cfg: Any, samples: list[Sample], plan: PackPlan, text_budget: int, patch_budget: int,
         pixel_dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """The packed batch of ``plan``: model inputs + ``labels`` + ``padding_fraction`` stats.

    Returns input_ids / labels / segment_ids / scatter_index int32[R, S], position_ids
    int32[3, R, S], and pixel_values [P, 1176] in ``pixel_dtype`` (float32 or bfloat16, rounded
    to nearest even like the model's own cast), vision_pos int32[P, 2], vision_segment_ids
    int32[P] (always present, all padding if there are no images).
    """
    pixel_dtype = pixel_dtype_of(pixel_dtype)
    m = cfg.vision.spatial_merge_size
    R, S, P = len(plan.rows), text_budget, patch_budget
    ids = np.zeros((R, S), np.int32)
    labels = np.full((R, S), IGNORE_INDEX, np.int32)
    seg = np.zeros((R, S), np.int32)
    pos = np.ones((3, R, S), np.int32)
    scatter = np.full((R, S), -1, np.int32)
    pixels, grids = [], []
    merged_offset = 0
    for r, members in enumerate(plan.rows):
        col = 0
        for k, i in enumerate(members):
            s = samples[i]
            n = s.num_tokens
            img = _grid(s.image_grid_thw)
            vid = _grid(s.video_grid_thw)
            if s.num_patches:
                check_grid(np.concatenate([img, vid]), s.num_patches, m, f"sample {i} grid_thw")
            p, _ = get_rope_index(
                s.input_ids[None], img if len(img) else None, vid if len(vid) else None, None,
                spatial_merge_size=m, image_token_id=cfg.image_token_id,
                video_token_id=cfg.video_token_id, vision_start_token_id=cfg.vision_start_token_id,
            )
            sl = slice(col, col + n)
            ids[r, sl] = s.input_ids
            lab = np.asarray(s.labels, np.int32).copy()
            lab[0] = IGNORE_INDEX  # would be predicted from the previous sample's last token
            labels[r, sl] = lab
            seg[r, sl] = k + 1
            pos[:, r, sl] = p[:, 0]
            # Merged vision rows of this sample: its images, then its videos (stream order).
            n_img = int(np.prod(img, axis=1).sum()) // m**2 if len(img) else 0
            n_vid = int(np.prod(vid, axis=1).sum()) // m**2 if len(vid) else 0
            is_img = s.input_ids == cfg.image_token_id
            is_vid = s.input_ids == cfg.video_token_id
            if int(is_img.sum()) != n_img or int(is_vid.sum()) != n_vid:
                raise ValueError(f"sample {i}: {int(is_img.sum())} image / {int(is_vid.sum())} video "
                                 f"placeholders but its grids give {n_img} / {n_vid} merged tokens")
            row_scatter = np.full(n, -1, np.int32)
            row_scatter[is_img] = merged_offset + np.arange(n_img)
            row_scatter[is_vid] = merged_offset + n_img + np.arange(n_vid)
            scatter[r, sl] = row_scatter
            merged_offset += n_img + n_vid
            if s.num_patches:
                pixels.append(s.pixel_values)
                grids.extend([img, vid])
            col += n
    used = int(sum(x.shape[0] for x in pixels))
    if used > P:
        raise ValueError(f"the plan uses {used} patches, more than the patch budget {P}")
    grid_all = np.concatenate(grids) if grids else np.zeros((0, 3), np.int64)
    vseg = vision_segment_ids(grid_all)
    pad = P - used
    pixel_values = np.zeros((P, cfg.vision.patch_dim), pixel_dtype)
    offset = 0
    for x in pixels:  # written in place: the cast to bfloat16 needs no float32 copy of the stream
        pixel_values[offset:offset + x.shape[0]] = x
        offset += x.shape[0]
    batch = {
        "input_ids": ids, "labels": labels, "segment_ids": seg, "position_ids": pos,
        "scatter_index": scatter, "pixel_values": pixel_values,
        "vision_pos": np.concatenate([vision_position_ids(grid_all, m), np.zeros((pad, 2), np.int32)]),
        "vision_segment_ids": np.concatenate([vseg, np.full(pad, int(vseg.max(initial=-1)) + 1, np.int32)]),
    }
    stats = {"text_padding_fraction": float((seg == 0).mean()), "patch_padding_fraction": pad / P if P else 0.0}
    return batch | {k: np.float32(v) for k, v in stats.items()}


def _grid(grid: Any) -> np.ndarray:
    if grid is None:
        return np.zeros((0, 3), np.int64)
    return np.asarray(grid, np.int64).reshape(-1, 3)


def packed_batch_shapes(cfg: Any, rows: int, text_budget: int, patch_budget: int,
                        pixel_dtype: Any = np.float32) -> dict[str, tuple]:
    """``{key: (shape, dtype)}`` of the model arrays of one ``pack`` result (without the stats):
    what the compiled train step sees, for ahead-of-time compilation (``pixel_dtype``: that of
    the pipeline's ``pixel_values``, float32 or bfloat16)."""
    R, S, P = rows, text_budget, patch_budget
    return {
        "input_ids": ((R, S), np.int32), "labels": ((R, S), np.int32), "segment_ids": ((R, S), np.int32),
        "position_ids": ((3, R, S), np.int32), "scatter_index": ((R, S), np.int32),
        "pixel_values": ((P, cfg.vision.patch_dim), pixel_dtype_of(pixel_dtype)), "vision_pos": ((P, 2), np.int32),
        "vision_segment_ids": ((P,), np.int32),
    }
