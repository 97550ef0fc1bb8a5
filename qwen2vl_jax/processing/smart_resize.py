"""`smart_resize`: the target (height, width) of an image or video frame (docs/preprocessing.md).

Both sides become multiples of `factor` (= patch_size * merge_size = 28) and the area is pulled
into [min_pixels, max_pixels] while keeping the aspect ratio as well as the 28-px grid allows.
"""

from __future__ import annotations

import math
from typing import Literal

# qwen-vl-utils and transformers both refuse images more elongated than this (their smart_resize).
MAX_ASPECT_RATIO = 200

SmartResizeVariant = Literal["hf", "qwen_vl_utils"]


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 4 * 28 * 28,
    max_pixels: int = 16384 * 28 * 28,
    variant: SmartResizeVariant = "hf",
) -> tuple[int, int]:
    """Return the resized `(height, width)` for an image of `height x width` pixels.

    Args:
        height, width: input size in pixels (> 0).
        factor: both outputs are multiples of it (28 for Qwen2-VL).
        min_pixels, max_pixels: area budget. Defaults are the hub `preprocessor_config.json`
            values (4..16384 tokens of 28x28), not the transformers class defaults.
        variant: "hf" reproduces transformers 4.5x (`max(factor, ...)` clamp on the shrink
            branch only); "qwen_vl_utils" reproduces qwen-vl-utils 0.0.8 (clamp on the initial
            round only). They differ only for extreme sizes.

    Returns:
        (resized_height, resized_width), both multiples of `factor`.

    Raises:
        ValueError: non-positive size or an aspect ratio above 200.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {ratio}")

    # Python's round() rounds halves to even (70/28 = 2.5 -> 2): the reference relies on it.
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if variant == "qwen_vl_utils":
        h_bar = max(factor, h_bar)
        w_bar = max(factor, w_bar)
    elif variant != "hf":
        raise ValueError(f"unknown smart_resize variant {variant!r}")

    # The float expressions below keep the reference's exact operation order so that
    # floor/ceil see bit-identical operands.
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
        if variant == "hf":
            h_bar = max(factor, h_bar)
            w_bar = max(factor, w_bar)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar
