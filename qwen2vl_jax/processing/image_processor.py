"""`Qwen2VLImageProcessor`: images -> `pixel_values` + `image_grid_thw` (docs/preprocessing.md).

Matches transformers 4.57.6's slow (PIL) `Qwen2VLImageProcessor` bit for bit, but with the hub
budget (min 3136, max 12,845,056 pixels) as the default instead of transformers' class default
max of 1,003,520, which would give ~14x fewer tokens on large photos than the checkpoints saw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qwen2vl_jax.processing.base_processor import BaseVisionProcessor
from qwen2vl_jax.processing.image_inputs import ImageInput, describe, to_rgb_image


def flatten_image_list(images: Any) -> list[Any]:
    """Accept one image, a list, or a list of per-sample lists; return a flat list."""
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        return [images]
    flat: list[Any] = []
    for item in images:
        flat.extend(item if isinstance(item, (list, tuple)) else [item])
    return flat


class Qwen2VLImageProcessor(BaseVisionProcessor):
    """Image preprocessing for Qwen2-VL.

    `proc(images=[PIL.Image | np.ndarray | path, ...], return_tensors="np")` returns
    `{"pixel_values": float32[N, 1176], "image_grid_thw": int64[n_images, 3]}` where
    N = sum over images of t * h * w (t = 1; h, w in 14-px patches) and each image then needs
    t * h * w / merge_size**2 `<|image_pad|>` tokens.
    """

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        return_tensors: str | None = "np",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> dict[str, np.ndarray]:
        """Preprocess images; see the class docstring. `min_pixels`/`max_pixels` override the
        budget for this call only. Raises ValueError naming the image (index / path) on bad
        input."""
        if return_tensors not in ("np", None):
            raise ValueError(f"return_tensors must be 'np' or None, got {return_tensors!r}")
        flat = flatten_image_list(images)
        if not flat:
            raise ValueError("no images given")
        min_px = self.min_pixels if min_pixels is None else int(min_pixels)
        max_px = self.max_pixels if max_pixels is None else int(max_pixels)
        all_patches, grids = [], []
        for index, image in enumerate(flat):
            patches, grid = self.process_one(image, index, min_px, max_px)
            all_patches.append(patches)
            grids.append(grid)
        return {
            "pixel_values": np.concatenate(all_patches, axis=0).astype(np.float32, copy=False),
            "image_grid_thw": np.asarray(grids, dtype=np.int64).reshape(-1, 3),
        }

    preprocess = __call__

    def process_one(
        self, image: ImageInput, index: int, min_pixels: int, max_pixels: int
    ) -> tuple[np.ndarray, tuple[int, int, int]]:
        """One image -> (float32[t*h*w, 1176], (t, h, w))."""
        rgb = to_rgb_image(image, index)
        height, width = rgb.pixels.shape[:2]
        name = describe(image, index)
        target_h, target_w = self.target_size(height, width, name, min_pixels, max_pixels)
        return self.frames_to_patches([rgb], target_h, target_w)

    def num_image_tokens(self, height: int, width: int) -> int:
        """LLM tokens an image of `height x width` pixels will take (t*h*w/merge^2)."""
        h, w = self.target_size(height, width, "image", self.min_pixels, self.max_pixels)
        return (h // self.factor) * (w // self.factor)
