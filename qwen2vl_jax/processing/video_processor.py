"""`Qwen2VLVideoProcessor`: videos -> `pixel_values_videos` + `video_grid_thw` (docs/preprocessing.md).

A video is either
* a file path: decoded with PyAV, frames sampled and pre-resized as qwen-vl-utils 0.0.8 does
  (2 fps, an even count in [4, 768], per-frame budget from the clip's total pixel budget), or
* already-sampled frames: a list of PIL images / uint8[H, W, 3] arrays, or one
  uint8[T, H, W, 3] (or [T, 3, H, W]) array. They are used as given, like transformers'
  `Qwen2VLVideoProcessor` with `do_sample_frames=False`.

The frames then follow the image pipeline of the reference slow path: smart_resize with this
processor's budget (a no-op for qwen-vl-utils-sized frames), PIL bicubic, rescale, CLIP
normalisation, padding to an even frame count by repeating the last frame, and the patch
flattening. Known differences from the torchvision-based references (not installable here):
qwen-vl-utils and transformers' video processor resize with torchvision bicubic+antialias
(a few uint8 levels from PIL) and transformers fuses rescale+normalise in float32 (~1e-7).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import PIL.Image

from qwen2vl_jax.processing import video_io
from qwen2vl_jax.processing.base_processor import BaseVisionProcessor
from qwen2vl_jax.processing.image_inputs import RGBImage, describe, to_rgb_image
from qwen2vl_jax.processing.pixel_pipeline import resize_rgb
from qwen2vl_jax.processing.smart_resize import smart_resize
from qwen2vl_jax.processing.video_sampling import (
    DEFAULT_FPS,
    FPS_MIN_FRAMES,
    VIDEO_MIN_PIXELS,
    VIDEO_TOTAL_PIXELS,
    num_sampled_frames,
    sample_frame_indices,
    video_max_pixels,
)


def _is_frame(item: Any) -> bool:
    return isinstance(item, PIL.Image.Image) or (isinstance(item, np.ndarray) and item.ndim == 3)


def split_videos(videos: Any) -> list[Any]:
    """Normalise the `videos` argument to a list of videos.

    A path or a 4-D array is one video; a list whose items are all frames (PIL images or 3-D
    arrays) is one video of frames; any other list is a list of videos.
    """
    if videos is None:
        return []
    if isinstance(videos, (str, os.PathLike, np.ndarray)):
        return [videos]
    if isinstance(videos, (list, tuple)):
        if videos and all(_is_frame(item) for item in videos):
            return [list(videos)]
        return list(videos)
    raise ValueError(f"unsupported videos argument of type {type(videos).__name__}")


class Qwen2VLVideoProcessor(BaseVisionProcessor):
    """Video preprocessing for Qwen2-VL.

    `proc(videos=[path | frames, ...], return_tensors="np")` returns
    `{"pixel_values_videos": float32[N, 1176], "video_grid_thw": int64[n_videos, 3]}` with
    grid (frames / 2, H' / 14, W' / 14); a video needs t*h*w/4 `<|video_pad|>` tokens.

    Args (besides those of `BaseVisionProcessor`; min/max_pixels default to the hub budget,
    which is what transformers uses when a checkpoint has no video_preprocessor_config.json):
        fps, min_frames, max_frames, nframes: frame sampling for files (qwen-vl-utils).
        video_min_pixels, video_total_pixels, video_max_pixels: qwen-vl-utils' per-frame budget
            for files; `video_max_pixels=None` derives it from the total budget.
    """

    config_name = "video_preprocessor_config.json"
    processor_type = "Qwen2VLVideoProcessor"

    def __init__(
        self,
        fps: float = DEFAULT_FPS,
        min_frames: int = FPS_MIN_FRAMES,
        max_frames: int | None = None,
        nframes: int | None = None,
        video_min_pixels: int = VIDEO_MIN_PIXELS,
        video_total_pixels: int = VIDEO_TOTAL_PIXELS,
        video_max_pixels: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fps = float(fps)
        self.min_frames = int(min_frames)
        self.max_frames = None if max_frames is None else int(max_frames)
        self.nframes = None if nframes is None else int(nframes)
        self.video_min_pixels = int(video_min_pixels)
        self.video_total_pixels = int(video_total_pixels)
        self.video_max_pixels = None if video_max_pixels is None else int(video_max_pixels)

    def to_dict(self) -> dict[str, Any]:
        config = super().to_dict()
        config.update(
            fps=self.fps,
            min_frames=self.min_frames,
            max_frames=self.max_frames,
            nframes=self.nframes,
            video_min_pixels=self.video_min_pixels,
            video_total_pixels=self.video_total_pixels,
            video_max_pixels=self.video_max_pixels,
            video_processor_type=self.processor_type,
        )
        config.pop("image_processor_type")
        return config

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any) -> Qwen2VLVideoProcessor:
        """Read `video_preprocessor_config.json`, falling back to `preprocessor_config.json`
        (as transformers does for the Qwen2-VL hub checkpoints, which ship only the latter)."""
        if os.path.isfile(os.path.join(os.fspath(directory), cls.config_name)):
            config = cls._read_config(directory)
        else:
            config = BaseVisionProcessor._read_config(directory)
        config.update(overrides)
        return cls(**config)

    def __call__(self, videos: Any, return_tensors: str | None = "np") -> dict[str, np.ndarray]:
        """Preprocess videos; see the class docstring. ValueError names the video on bad input."""
        if return_tensors not in ("np", None):
            raise ValueError(f"return_tensors must be 'np' or None, got {return_tensors!r}")
        video_list = split_videos(videos)
        if not video_list:
            raise ValueError("no videos given")
        all_patches, grids = [], []
        for index, video in enumerate(video_list):
            patches, grid = self.process_one(video, index)
            all_patches.append(patches)
            grids.append(grid)
        return {
            "pixel_values_videos": np.concatenate(all_patches, axis=0).astype(np.float32, copy=False),
            "video_grid_thw": np.asarray(grids, dtype=np.int64).reshape(-1, 3),
        }

    preprocess = __call__

    def process_one(self, video: Any, index: int) -> tuple[np.ndarray, tuple[int, int, int]]:
        """One video -> (float32[t*h*w, 1176], (t, h, w))."""
        name = describe(video, index, kind="video")
        if isinstance(video, (str, os.PathLike)):
            frames = self.load_video_file(video, name)
        else:
            frames = self._frames_from_sequence(video, name, index)
        height, width = frames[0].pixels.shape[:2]
        target_h, target_w = self.target_size(height, width, name, self.min_pixels, self.max_pixels)
        return self.frames_to_patches(frames, target_h, target_w)

    def _frames_from_sequence(self, video: Any, name: str, index: int) -> list[RGBImage]:
        if isinstance(video, np.ndarray):
            if video.ndim != 4:
                raise ValueError(f"{name}: video arrays must be 4-D [T, H, W, 3], got {video.shape}")
            video = list(video)
        if not isinstance(video, (list, tuple)):
            raise ValueError(f"{name}: expected a path, a list of frames or a 4-D array")  # noqa: TRY004 - bad input is a ValueError by contract
        if not video:
            raise ValueError(f"{name}: video has no frames")
        frames = []
        for frame_index, frame in enumerate(video):
            try:
                frames.append(to_rgb_image(frame, frame_index, kind="frame"))
            except ValueError as err:
                raise ValueError(f"video {index}: {err}") from err
        first = frames[0].pixels.shape
        for frame_index, frame in enumerate(frames):
            if frame.pixels.shape != first:
                raise ValueError(
                    f"{name}: frame {frame_index} has size {frame.pixels.shape[:2]}, "
                    f"frame 0 has {first[:2]}; all frames of a video must match"
                )
        return frames

    def load_video_file(self, path: str | os.PathLike, name: str) -> list[RGBImage]:
        """Decode, sample (qwen-vl-utils) and pre-resize a video file -> uint8 frames."""
        if not os.path.isfile(path):
            raise ValueError(f"{name}: file not found")
        if os.path.getsize(path) == 0:
            raise ValueError(f"{name}: file is empty (0 bytes)")
        total, video_fps = video_io.count_frames(path, name)
        if total == 0:
            raise ValueError(f"{name}: no decodable frames")
        try:
            count = num_sampled_frames(
                total, video_fps, self.fps, self.min_frames, self.max_frames, self.nframes
            )
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err
        indices = sample_frame_indices(total, count)
        raw = video_io.read_frames(path, name, indices)
        height, width = raw[0].shape[:2]
        max_pixels = self.video_max_pixels
        if max_pixels is None:
            max_pixels = video_max_pixels(count, self.video_min_pixels, self.video_total_pixels)
        try:
            target_h, target_w = smart_resize(
                height, width, self.factor, self.video_min_pixels, max_pixels, variant="qwen_vl_utils"
            )
        except ValueError as err:
            raise ValueError(f"{name}: {err}") from err
        return [RGBImage(resize_rgb(RGBImage(frame), target_h, target_w, self.resample)) for frame in raw]

    def num_video_tokens(self, num_frames: int, height: int, width: int) -> int:
        """LLM tokens for `num_frames` already-sampled frames of `height x width`."""
        h, w = self.target_size(height, width, "video", self.min_pixels, self.max_pixels)
        t = -(-num_frames // self.temporal_patch_size)
        return t * (h // self.factor) * (w // self.factor)
