"""Frame sampling and the per-frame pixel budget for video files, as qwen-vl-utils 0.0.8 (the
Qwen2-VL-era release, ``vision_process.py``) does it (docs/preprocessing.md)."""

from __future__ import annotations

import math

import numpy as np

FRAME_FACTOR = 2  # frames come in pairs: temporal_patch_size
DEFAULT_FPS = 2.0
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
VIDEO_MIN_PIXELS = 128 * 28 * 28  # 100,352 per frame
VIDEO_MAX_PIXELS = 768 * 28 * 28  # 602,112 per frame
VIDEO_TOTAL_PIXELS = 24576 * 28 * 28  # 19,267,584 over the whole clip (0.0.8 value)


def num_sampled_frames(
    total_frames: int,
    video_fps: float,
    fps: float = DEFAULT_FPS,
    min_frames: int = FPS_MIN_FRAMES,
    max_frames: int | None = None,
    nframes: int | None = None,
) -> int:
    """qwen-vl-utils `smart_nframes`: how many frames to keep.

    Either `nframes` (rounded to even) or `fps` frames per second of video, clamped to
    [min_frames, max_frames] (rounded to even; max_frames defaults to min(768, total_frames))
    and rounded half-to-even onto an even count.

    Raises:
        ValueError: the result is outside [2, total_frames] (e.g. a one-frame video).
    """
    if nframes is not None:
        count = round(nframes / FRAME_FACTOR) * FRAME_FACTOR
    else:
        if video_fps <= 0:
            raise ValueError(f"video fps must be positive, got {video_fps}")
        low = math.ceil(min_frames / FRAME_FACTOR) * FRAME_FACTOR
        high_raw = min(FPS_MAX_FRAMES, total_frames) if max_frames is None else max_frames
        high = math.floor(high_raw / FRAME_FACTOR) * FRAME_FACTOR
        count = total_frames / video_fps * fps
        count = min(max(count, low), high)
        count = round(count / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= count <= total_frames:
        raise ValueError(
            f"cannot sample {count} frames from a video with {total_frames} frame(s); "
            f"need between {FRAME_FACTOR} and {total_frames}"
        )
    return int(count)


def sample_frame_indices(total_frames: int, count: int) -> np.ndarray:
    """int64[count] indices `linspace(0, total - 1, count)` rounded half to even.

    qwen-vl-utils computes this in torch float32; numpy float64 gives the same integers for
    every (total, count) the tests sweep (checked against torch in tests/processing).
    """
    return np.round(np.linspace(0, total_frames - 1, count)).astype(np.int64)


def video_max_pixels(
    num_frames: int,
    min_pixels: int = VIDEO_MIN_PIXELS,
    total_pixels: int = VIDEO_TOTAL_PIXELS,
) -> float:
    """Per-frame max area: the clip's total budget shared over its frames, clamped to
    [1.05 * min_pixels, VIDEO_MAX_PIXELS] (qwen-vl-utils `fetch_video`)."""
    return max(min(VIDEO_MAX_PIXELS, total_pixels / num_frames * FRAME_FACTOR), int(min_pixels * 1.05))
