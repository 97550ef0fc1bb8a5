"""Decode a video file with PyAV (optional dependency) and keep the sampled frames.

Matches qwen-vl-utils' torchvision backend (which itself decodes with PyAV): the frame count is
the number of decodable frames and the fps is the stream's average rate.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np

INSTALL_HINT = "reading video files needs PyAV: pip install 'qwen2vl_jax[video]' (or: pip install av)"


class MissingDependencyError(ImportError, ValueError):
    """An optional dependency is not installed. A user error (the command line exits with status
    2 and the message, which names the extra to install), and still an ``ImportError``."""


def _import_av():
    try:
        import av
    except ImportError as err:
        raise MissingDependencyError(INSTALL_HINT, name="av") from err
    return av


def _decode(path: str, name: str, keep: Callable[[int], bool]) -> tuple[list[np.ndarray], int, float]:
    """One decoding pass: returns (kept uint8[H, W, 3] frames, decodable frame count, fps)."""
    av = _import_av()
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as err:
        raise ValueError(f"{name}: cannot open video file ({type(err).__name__}: {err})") from err
    frames: list[np.ndarray] = []
    count = 0
    with container:
        if not container.streams.video:
            raise ValueError(f"{name}: file has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        try:
            for frame in container.decode(stream):
                if keep(count):
                    frames.append(frame.to_ndarray(format="rgb24"))
                count += 1
        except (av.FFmpegError, OSError, ValueError, EOFError) as err:
            # Like torchvision.io.read_video, keep what decoded before the damage.
            if count == 0:
                raise ValueError(f"{name}: no decodable frames ({type(err).__name__}: {err})") from err
            warnings.warn(f"{name}: decoding stopped after {count} frames ({err})", stacklevel=3)
    return frames, count, fps


def count_frames(path: str | os.PathLike, name: str) -> tuple[int, float]:
    """(number of decodable frames, average fps) of the first video stream."""
    _, count, fps = _decode(os.fspath(path), name, keep=lambda i: False)
    return count, fps


def read_frames(path: str | os.PathLike, name: str, indices: np.ndarray) -> list[np.ndarray]:
    """Decode the frames at `indices` (sorted, may repeat) -> list of uint8[H, W, 3]."""
    wanted = {int(i) for i in indices}
    kept, _, _ = _decode(os.fspath(path), name, keep=lambda i: i in wanted)
    # The second pass can only see frames the first pass counted; order follows the stream.
    by_index = dict(zip(sorted(wanted), kept, strict=False))
    if len(by_index) != len(wanted):
        raise ValueError(f"{name}: video changed while being read")
    return [by_index[int(i)] for i in indices]
