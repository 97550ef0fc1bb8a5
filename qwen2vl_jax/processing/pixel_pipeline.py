"""Resize, rescale and normalise one RGB frame exactly like the reference slow path (docs/preprocessing.md).

The float arithmetic is kept in the reference's order and dtypes, because the parity target is
|diff| <= 1e-5: rescale multiplies in float64 and stores float32, and normalisation runs in
float32 with float32 mean/std (transformers `image_transforms.rescale` / `normalize`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import PIL.Image

from qwen2vl_jax.processing.image_inputs import RGBImage

# OpenAI CLIP statistics; the Qwen2-VL checkpoints were trained with them.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_rgb(image: RGBImage, height: int, width: int, resample: int) -> np.ndarray:
    """PIL-resize `image.pixels` (uint8[H, W, 3]) to uint8[height, width, 3].

    PIL is also what the reference uses; a same-size resize returns an exact copy.
    """
    pil = PIL.Image.fromarray(image.pixels)
    return np.asarray(pil.resize((width, height), resample=resample))


def rescale_normalize(
    pixels: np.ndarray,
    unit_range: bool,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    image_mean: Sequence[float],
    image_std: Sequence[float],
) -> np.ndarray:
    """uint8[H, W, 3] -> float32[3, H, W] after rescale and normalisation.

    Args:
        unit_range: the input was a float image in [0, 1]; the reference divides by 255 once
            more right after its PIL round trip (see `image_inputs`).
    """
    x: np.ndarray = pixels
    if unit_range:
        x = (x.astype(np.float64) * (1 / 255)).astype(np.float32)
    if do_rescale:
        x = (x.astype(np.float64) * rescale_factor).astype(np.float32)
    if do_normalize:
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        mean = np.asarray(image_mean, dtype=x.dtype)
        std = np.asarray(image_std, dtype=x.dtype)
        x = (x - mean) / std
    # Channels first, as the reference's `data_format=FIRST`; the patch flattening needs it.
    return np.ascontiguousarray(x.transpose(2, 0, 1)).astype(np.float32, copy=False)
