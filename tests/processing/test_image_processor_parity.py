"""Pixel-exact parity of Qwen2VLImageProcessor with transformers 4.57.6's slow (PIL) processor."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import PIL.Image
import pytest

from qwen2vl_jax.processing import Qwen2VLImageProcessor

HUB_BUDGET = (3136, 12845056)
SMALL_BUDGET = (3136, 28 * 28 * 16)  # forces downscaling of everything above ~112x112

# (height, width, mode): .5 rounding cases, tiny, very wide/tall, large, every awkward mode.
PIL_CASES = [
    (70, 70, "RGB"),  # 70/28 = 2.5 rounds to 2 (half to even) -> 56
    (42, 98, "RGB"),  # 1.5 -> 2 and 3.5 -> 4
    (126, 182, "RGB"),  # 4.5 -> 4 and 6.5 -> 6
    (1, 1, "RGB"),  # one pixel
    (3, 3, "RGB"),  # height 3: ambiguous channel axis in the reference (see _hf_input_format)
    (2, 5, "RGB"),
    (10, 1999, "RGB"),  # aspect ratio 199.9, just allowed
    (2000, 12, "RGB"),  # very tall
    (28, 5600, "RGB"),  # ratio exactly 200
    (720, 1280, "RGB"),  # docs/preprocessing.md example: grid (1, 52, 92)
    (1500, 2000, "RGB"),  # large
    (333, 500, "P"),
    (64, 96, "CMYK"),
    (50, 90, "LA"),
    (41, 40, "I;16"),
    (77, 55, "RGBA"),
    (60, 61, "L"),
    (45, 45, "1"),
    (100, 30, "PA"),
    (300, 200, "YCbCr"),
]


def _hf_processor(budget: tuple[int, int]):
    transformers = pytest.importorskip("transformers")
    # Constructing the class directly gives the slow (PIL) processor, even in 4.54+.
    return transformers.Qwen2VLImageProcessor(min_pixels=budget[0], max_pixels=budget[1])


def _hf_run(hf, images: list, input_format: str) -> dict:
    # The reference infers the channel axis from the array shape and takes HxWx3 images with
    # H in {1, 3} for channels-first (crashing for H=1, garbage for H=3). We always know the
    # layout, so the oracle is told it explicitly.
    return hf(images=images, return_tensors="np", input_data_format=input_format)


def _assert_same(ours: dict, ref: dict) -> float:
    np.testing.assert_array_equal(ours["image_grid_thw"], ref["image_grid_thw"])
    assert ours["image_grid_thw"].dtype == np.int64
    assert ours["pixel_values"].dtype == np.float32
    assert ours["pixel_values"].shape == ref["pixel_values"].shape
    diff = float(np.max(np.abs(ours["pixel_values"] - ref["pixel_values"])))
    assert diff <= 1e-5
    return diff


@pytest.mark.parity
@pytest.mark.parametrize("budget", [HUB_BUDGET, SMALL_BUDGET], ids=["hub", "small"])
@pytest.mark.parametrize("case", PIL_CASES, ids=[f"{h}x{w}-{m}" for h, w, m in PIL_CASES])
def test_pil_image_parity(case, budget, make_image):
    height, width, mode = case
    image = make_image(height, width, mode, seed=height * 7 + width)
    ours = Qwen2VLImageProcessor(min_pixels=budget[0], max_pixels=budget[1])([image])
    ref = _hf_run(_hf_processor(budget), [image], "channels_last")
    _assert_same(ours, ref)


def test_spec_example_grid(make_image):
    ours = Qwen2VLImageProcessor()([make_image(720, 1280, "RGB", 0)])
    np.testing.assert_array_equal(ours["image_grid_thw"], [[1, 52, 92]])
    assert ours["pixel_values"].shape == (4784, 1176)


@pytest.mark.parity
@pytest.mark.parametrize("budget", [HUB_BUDGET, SMALL_BUDGET], ids=["hub", "small"])
def test_numpy_inputs_parity(budget, make_pixels):
    hwc = make_pixels(90, 130, seed=3)
    cases = [
        (hwc, "channels_last"),
        (np.ascontiguousarray(hwc.transpose(2, 0, 1)), "channels_first"),
        (hwc.astype(np.int64), "channels_last"),  # integer-valued, cast to uint8 like the reference
        (hwc.astype(np.float32), "channels_last"),  # float but integer-valued 0..255
        (hwc.astype(np.float64) / 255.0, "channels_last"),  # [0, 1] floats: double rescale quirk
    ]
    ours_proc = Qwen2VLImageProcessor(min_pixels=budget[0], max_pixels=budget[1])
    hf = _hf_processor(budget)
    for array, layout in cases:
        with pytest.warns(UserWarning) if array.dtype == np.float64 else contextlib.nullcontext():
            ours = ours_proc([array])
        _assert_same(ours, _hf_run(hf, [array], layout))


@pytest.mark.parity
def test_path_inputs_with_exif_rotation_parity(tmp_path, make_image, make_pixels):
    # A JPEG with EXIF orientation 6 (rotate 90): the reference's load_image applies it.
    image = PIL.Image.fromarray(make_pixels(60, 150, seed=5))
    exif = PIL.Image.Exif()
    exif[0x0112] = 6
    jpeg = tmp_path / "rotated.jpg"
    image.save(jpeg, exif=exif.tobytes(), quality=90)
    png = tmp_path / "plain.png"
    make_image(33, 47, "RGBA", 1).save(png)
    ours = Qwen2VLImageProcessor()([str(jpeg), str(png)])
    ref = _hf_processor(HUB_BUDGET)(images=[str(jpeg), str(png)], return_tensors="np")
    _assert_same(ours, ref)
    # Rotated: the 60x150 JPEG becomes 150 high.
    assert ours["image_grid_thw"][0, 1] > ours["image_grid_thw"][0, 2]


@pytest.mark.parity
def test_batch_of_mixed_images_parity(make_image):
    images = [make_image(h, w, m, i) for i, (h, w, m) in enumerate(PIL_CASES[:8])]
    ours = Qwen2VLImageProcessor()(images)
    ref = _hf_run(_hf_processor(HUB_BUDGET), images, "channels_last")
    _assert_same(ours, ref)


def test_from_pretrained_reads_hub_budget(checkpoint_dir):
    proc = Qwen2VLImageProcessor.from_pretrained(checkpoint_dir)
    assert (proc.min_pixels, proc.max_pixels) == HUB_BUDGET
    # 3000x4000 -> (2996, 4004) under the hub budget (docs/preprocessing.md), not (840, 1148).
    assert proc.target_size(3000, 4000, "x", proc.min_pixels, proc.max_pixels) == (2996, 4004)
    again = Qwen2VLImageProcessor.from_pretrained(_saved(proc, checkpoint_dir))
    assert again.to_dict() == proc.to_dict()


def _saved(proc, base) -> str:
    out = os.path.join(base, "resaved")
    proc.save_pretrained(out)
    return out


def test_flatten_order_coordinate_coded():
    """Patch order (docs/preprocessing.md), coordinate-coded image: row k is patch (bh*2+mh, bw*2+mw)."""
    from qwen2vl_jax.processing.patchify import flatten_patches, pad_frames

    gh, gw, p = 4, 6, 14
    frames = np.zeros((1, 3, gh * p, gw * p), dtype=np.float32)
    for r in range(gh):
        for c in range(gw):
            frames[0, 0, r * p : (r + 1) * p, c * p : (c + 1) * p] = r
            frames[0, 1, r * p : (r + 1) * p, c * p : (c + 1) * p] = c
    frames[0, 2] = np.arange(gw * p)[None, :] % p  # pixel column inside the patch
    patches, grid = flatten_patches(pad_frames(frames, 2), 14, 2, 2)
    assert grid == (1, gh, gw)
    rows = [
        (bh * 2 + mh, bw * 2 + mw)
        for bh in range(gh // 2)
        for bw in range(gw // 2)
        for mh in range(2)
        for mw in range(2)
    ]
    per_channel = patches.reshape(-1, 3, 2, p, p)
    np.testing.assert_array_equal(per_channel[:, 0, 0, 0, 0], [r for r, _ in rows])
    np.testing.assert_array_equal(per_channel[:, 1, 1, 0, 0], [c for _, c in rows])
    np.testing.assert_array_equal(per_channel[0, 2, 0, 0], np.arange(p))  # pixel column is last
    np.testing.assert_array_equal(per_channel[:, :, 0], per_channel[:, :, 1])  # padded frame copy


def test_png_roundtrip_matches_in_memory(tmp_path, make_image):
    image = make_image(57, 83, "RGB", 9)
    path = tmp_path / "x.png"
    image.save(path)
    proc = Qwen2VLImageProcessor(max_pixels=28 * 28 * 8)
    a, b = proc([image]), proc([path])  # PathLike accepted too
    np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])
    assert not np.allclose(a["pixel_values"], 0)
