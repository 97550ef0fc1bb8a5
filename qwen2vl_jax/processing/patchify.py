"""Temporal padding and the exact patch flattening order (docs/preprocessing.md)."""

from __future__ import annotations

import numpy as np


def pad_frames(frames: np.ndarray, temporal_patch_size: int) -> np.ndarray:
    """Repeat the last frame until the frame count is a multiple of `temporal_patch_size`.

    frames: float32[F, C, H, W] -> float32[ceil(F / T) * T, C, H, W]. A single image (F = 1)
    becomes two identical frames, so its grid_t is 1.
    """
    remainder = frames.shape[0] % temporal_patch_size
    if remainder == 0:
        return frames
    repeats = np.repeat(frames[-1:], temporal_patch_size - remainder, axis=0)
    return np.concatenate([frames, repeats], axis=0)


def flatten_patches(
    frames: np.ndarray, patch_size: int, temporal_patch_size: int, merge_size: int
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Cut frames into patches in the order the vision tower expects.

    Args:
        frames: float32[F, C, H, W] with F a multiple of `temporal_patch_size` and H, W
            multiples of `patch_size * merge_size`.

    Returns:
        patches: float32[gt * gh * gw, C * T * P * P]. Rows run over (temporal slice, merge
            window row, merge window column, row inside the window, column inside the window)
            so the merge_size**2 patches of a window are consecutive; each row is laid out
            (channel, frame, pixel row, pixel column) like the Conv3d weight [E, C, T, P, P].
        grid_thw: (gt, gh, gw) in patch units.
    """
    num_frames, channels, height, width = frames.shape
    t, p, m = temporal_patch_size, patch_size, merge_size
    gt, gh, gw = num_frames // t, height // p, width // p
    x = frames.reshape(gt, t, channels, gh // m, m, p, gw // m, m, p)
    # axes: 0 gt, 1 t, 2 c, 3 bh, 4 mh, 5 ph, 6 bw, 7 mw, 8 pw -> gt, bh, bw, mh, mw, c, t, ph, pw
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, channels * t * p * p), (gt, gh, gw)
