"""Settings shared by the image and video processors, their JSON round trip, and the common
frames -> patches step (resize, rescale, normalise, temporal pad, flatten)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image

from qwen2vl_jax.processing.image_inputs import RGBImage
from qwen2vl_jax.processing.patchify import flatten_patches, pad_frames
from qwen2vl_jax.processing.pixel_pipeline import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    rescale_normalize,
    resize_rgb,
)
from qwen2vl_jax.processing.smart_resize import smart_resize

# Hub `preprocessor_config.json` budget of every Qwen2-VL checkpoint: 4..16384 tokens of 28x28.
HUB_MIN_PIXELS = 4 * 28 * 28
HUB_MAX_PIXELS = 16384 * 28 * 28


class BaseVisionProcessor:
    """Common settings (names follow the hub `preprocessor_config.json`).

    Args:
        min_pixels, max_pixels: per-image (per-frame) area budget for `smart_resize`. A `size`
            dict `{"shortest_edge", "longest_edge"}` is accepted as an alias; explicit
            min/max_pixels win over it.
        patch_size, temporal_patch_size, merge_size: vision tower geometry (14, 2, 2).
        resample: PIL filter id (3 = BICUBIC).
        do_resize, do_rescale, rescale_factor, do_normalize, image_mean, image_std: as in the
            reference. RGB conversion of PIL inputs always happens (`do_convert_rgb` is kept
            only so configs round-trip).
    """

    config_name = "preprocessor_config.json"
    processor_type = "Qwen2VLImageProcessor"

    def __init__(
        self,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        patch_size: int = 14,
        temporal_patch_size: int = 2,
        merge_size: int = 2,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        resample: int = int(PIL.Image.Resampling.BICUBIC),
        do_resize: bool = True,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        do_convert_rgb: bool = True,
        size: dict[str, int] | None = None,
        default_min_pixels: int = HUB_MIN_PIXELS,
        default_max_pixels: int = HUB_MAX_PIXELS,
        **unused: Any,
    ) -> None:
        size = size or {}
        self.min_pixels = int(
            min_pixels if min_pixels is not None else size.get("shortest_edge", default_min_pixels)
        )
        self.max_pixels = int(
            max_pixels if max_pixels is not None else size.get("longest_edge", default_max_pixels)
        )
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        self.patch_size = int(patch_size)
        self.temporal_patch_size = int(temporal_patch_size)
        self.merge_size = int(merge_size)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need 3 values (R, G, B)")
        self.resample = int(resample)
        self.do_resize = bool(do_resize)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.do_convert_rgb = bool(do_convert_rgb)

    @property
    def factor(self) -> int:
        """Side lengths must be multiples of this (28): one merged token covers factor^2 px."""
        return self.patch_size * self.merge_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, in the hub's key names (plus `size` as transformers writes)."""
        return {
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "resample": self.resample,
            "do_resize": self.do_resize,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "do_convert_rgb": self.do_convert_rgb,
            "image_processor_type": self.processor_type,
            "processor_class": "Qwen2VLProcessor",
        }

    @classmethod
    def _read_config(cls, directory: str | os.PathLike) -> dict[str, Any]:
        path = os.path.join(os.fspath(directory), cls.config_name)
        if not os.path.isfile(path):
            raise ValueError(f"{path}: not found")
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read JSON ({err})") from err

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any):
        """Build from `<directory>/preprocessor_config.json`; keyword arguments override it."""
        config = cls._read_config(directory)
        config.update(overrides)
        return cls(**config)

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write the settings to `<directory>/<config_name>` and return that path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(os.fspath(directory), self.config_name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        return path

    def target_size(
        self, height: int, width: int, name: str, min_pixels: int, max_pixels: int
    ) -> tuple[int, int]:
        """smart_resize (docs/preprocessing.md) with the input named in any error."""
        if not self.do_resize:
            if height % self.factor or width % self.factor:
                raise ValueError(
                    f"{name}: do_resize=False needs sides that are multiples of {self.factor}, got {height}x{width}"
                )
            return height, width
        try:
            return smart_resize(height, width, self.factor, min_pixels, max_pixels)
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err

    def frames_to_patches(
        self, frames: Sequence[RGBImage], height: int, width: int
    ) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Resize every frame to (height, width) and flatten (docs/preprocessing.md).

        Returns:
            patches: float32[gt * gh * gw, 3 * T * P * P]; grid_thw: (gt, gh, gw).
        """
        processed = []
        for frame in frames:
            pixels = resize_rgb(frame, height, width, self.resample) if self.do_resize else frame.pixels
            processed.append(
                rescale_normalize(
                    pixels,
                    frame.unit_range,
                    self.do_rescale,
                    self.rescale_factor,
                    self.do_normalize,
                    self.image_mean,
                    self.image_std,
                )
            )
        stacked = pad_frames(np.stack(processed), self.temporal_patch_size)
        return flatten_patches(stacked, self.patch_size, self.temporal_patch_size, self.merge_size)
