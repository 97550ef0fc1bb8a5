"""Video path: frame lists and files.

transformers 4.57.6's `Qwen2VLVideoProcessor` imports torchvision at module level and
torchvision cannot be installed next to this torch build, so it cannot run here. The oracles are
1. transformers' slow `Qwen2VLImageProcessor(videos=...)` (its backward-compatible video path:
   per-frame PIL resize, the same smart_resize, rescale/normalise, temporal pad, flatten) --
   pixel-exact parity, and
2. an independent numpy re-implementation of the torchvision video processor's math (docs/preprocessing.md:
   fused `(x - 255 mean) / (255 std)` in float32, batched permute(0,1,4,7,5,8,3,2,6,9)) on
   frames whose size is already a multiple of 28, where torchvision's resize is skipped.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from qwen2vl_jax.processing import Qwen2VLVideoProcessor
from qwen2vl_jax.processing.smart_resize import smart_resize
from qwen2vl_jax.processing.video_sampling import (
    VIDEO_MIN_PIXELS,
    num_sampled_frames,
    sample_frame_indices,
    video_max_pixels,
)

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def _frames(make_pixels, count: int, height: int, width: int, seed: int = 0) -> list[PIL.Image.Image]:
    return [PIL.Image.fromarray(make_pixels(height, width, seed + i)) for i in range(count)]


def _hf_slow(budget):
    transformers = pytest.importorskip("transformers")
    return transformers.Qwen2VLImageProcessor(min_pixels=budget[0], max_pixels=budget[1])


@pytest.mark.parity
@pytest.mark.parametrize("budget", [(3136, 12845056), (3136, 28 * 28 * 12)], ids=["hub", "small"])
@pytest.mark.parametrize("shape", [(1, 50, 70), (5, 90, 120), (4, 56, 84), (3, 3, 200), (6, 300, 17)])
def test_frame_list_parity_with_reference_slow_path(shape, budget, make_pixels):
    count, height, width = shape
    frames = _frames(make_pixels, count, height, width, seed=count + height)
    ours = Qwen2VLVideoProcessor(min_pixels=budget[0], max_pixels=budget[1])(videos=[frames])
    ref = _hf_slow(budget)(
        images=None, videos=[frames], return_tensors="np", input_data_format="channels_last"
    )
    np.testing.assert_array_equal(ours["video_grid_thw"], ref["video_grid_thw"])
    assert ours["video_grid_thw"][0, 0] == (count + 1) // 2  # odd counts pad the last frame
    assert ours["pixel_values_videos"].dtype == np.float32
    assert np.max(np.abs(ours["pixel_values_videos"] - ref["pixel_values_videos"])) <= 1e-5


def _numpy_hf_video_processor(video: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Independent numpy version of transformers' torchvision video processor for uint8
    [T, H, W, 3] frames already sized to multiples of 28 (so its resize is a no-op)."""
    x = video.transpose(0, 3, 1, 2)[None].astype(np.float32)  # [B, T, C, H, W]
    mean = (MEAN * 255).astype(np.float32)[:, None, None]
    std = (STD * 255).astype(np.float32)[:, None, None]
    x = (x - mean) / std
    if x.shape[1] % 2:
        x = np.concatenate([x, x[:, -1:]], axis=1)
    b, t, c, h, w = x.shape
    gt, gh, gw = t // 2, h // 14, w // 14
    x = x.reshape(b, gt, 2, c, gh // 2, 2, 14, gw // 2, 2, 14).transpose(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return x.reshape(gt * gh * gw, c * 2 * 14 * 14), (gt, gh, gw)


@pytest.mark.parametrize("shape", [(2, 56, 84), (3, 112, 56), (7, 56, 56)])
def test_matches_numpy_reimplementation_of_hf_video_math(shape, make_pixels):
    video = np.stack([make_pixels(shape[1], shape[2], i) for i in range(shape[0])])
    ours = Qwen2VLVideoProcessor()(videos=video)  # one 4-D array = one video
    ref, grid = _numpy_hf_video_processor(video)
    np.testing.assert_array_equal(ours["video_grid_thw"], [grid])
    # Fused vs two-step normalisation differs only in the last float32 bits.
    assert np.max(np.abs(ours["pixel_values_videos"] - ref)) <= 1e-5


def test_several_videos_and_layouts(make_pixels):
    a = np.stack([make_pixels(56, 56, i) for i in range(4)])
    b = [PIL.Image.fromarray(make_pixels(84, 56, 9))] * 2
    proc = Qwen2VLVideoProcessor()
    both = proc(videos=[a, b])
    one, two = proc(videos=a), proc(videos=b)
    np.testing.assert_array_equal(both["video_grid_thw"], [[2, 4, 4], [1, 6, 4]])
    np.testing.assert_array_equal(
        both["pixel_values_videos"], np.concatenate([one["pixel_values_videos"], two["pixel_values_videos"]])
    )
    chw = proc(videos=np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(chw["pixel_values_videos"], one["pixel_values_videos"])


def test_spec_sampling_example():
    # docs/preprocessing.md example: 300 frames at 30 fps, 640x360 -> 20 frames, 644x364, grid (10, 26, 46).
    count = num_sampled_frames(300, 30.0)
    assert count == 20
    h, w = smart_resize(360, 640, 28, VIDEO_MIN_PIXELS, video_max_pixels(count), variant="qwen_vl_utils")
    assert (h, w) == (364, 644)
    assert (count // 2) * (h // 14) * (w // 14) // 4 == 2990
    np.testing.assert_array_equal(sample_frame_indices(10, 4), [0, 3, 6, 9])


def test_sampling_bounds():
    assert num_sampled_frames(5, 30.0) == 4  # clamped up to min_frames 4
    assert num_sampled_frames(3, 30.0) == 2  # max_frames = floor(3 / 2) * 2
    assert num_sampled_frames(100000, 30.0) == 768
    assert num_sampled_frames(100, 10.0, nframes=7) == 8  # round(3.5) = 4 (half to even) * 2
    with pytest.raises(ValueError, match="1 frame"):
        num_sampled_frames(1, 30.0)


@pytest.mark.parity
def test_frame_indices_match_torch_linspace_round():
    torch = pytest.importorskip("torch")
    for total in range(2, 3000, 13):
        for count in range(2, min(total, 64) + 1, 2):
            ref = torch.linspace(0, total - 1, count).round().long().numpy()
            np.testing.assert_array_equal(sample_frame_indices(total, count), ref)


@pytest.mark.parity
def test_video_file_matches_independent_pipeline(tmp_path, make_pixels, write_video):
    av = pytest.importorskip("av")
    torch = pytest.importorskip("torch")
    video = np.stack([make_pixels(48, 64, i) for i in range(45)])
    path = str(tmp_path / "clip.mp4")
    write_video(path, video, fps=15)
    ours = Qwen2VLVideoProcessor()(videos=path)

    # Independent pipeline: decode everything, qwen-vl-utils sampling via torch, per-frame budget,
    # PIL resize, then the reference slow processor on the frame list.
    with av.open(path) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    total, fps = len(decoded), 15.0
    count = min(max(total / fps * 2.0, 4), (min(768, total) // 2) * 2)
    count = round(count / 2) * 2
    idx = torch.linspace(0, total - 1, count).round().long().tolist()
    max_px = max(min(768 * 784, 24576 * 784 / count * 2), int(128 * 784 * 1.05))
    h, w = smart_resize(48, 64, 28, 128 * 784, max_px, variant="qwen_vl_utils")
    frames = [PIL.Image.fromarray(decoded[i]).resize((w, h), PIL.Image.Resampling.BICUBIC) for i in idx]
    ref = _hf_slow((3136, 12845056))(
        images=None, videos=[frames], return_tensors="np", input_data_format="channels_last"
    )
    assert count == 6
    np.testing.assert_array_equal(ours["video_grid_thw"], ref["video_grid_thw"])
    assert np.max(np.abs(ours["pixel_values_videos"] - ref["pixel_values_videos"])) <= 1e-5
