"""Bad input: every case either works as the reference does (parity tests cover the modes) or
raises ValueError naming the input (index or path) and the reason."""

from __future__ import annotations

import struct
import sys
import zlib

import numpy as np
import PIL.Image
import pytest

from qwen2vl_jax.processing import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor


@pytest.fixture(scope="module")
def proc():
    return Qwen2VLImageProcessor()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height whose IDAT holds (almost) no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def test_zero_byte_file(proc, tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"image 1 .*empty\.png.*empty \(0 bytes\)"):
        proc([np.zeros((56, 56, 3), np.uint8), str(path)])


def test_unreadable_file(proc, tmp_path):
    path = tmp_path / "garbage.jpg"
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ValueError, match=r"garbage\.jpg.*cannot read image file"):
        proc([str(path)])


def test_missing_file(proc, tmp_path):
    with pytest.raises(ValueError, match=r"nope\.png.*file not found"):
        proc([str(tmp_path / "nope.png")])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(proc, tmp_path, make_image, fmt):
    path = tmp_path / f"cut.{fmt.lower()}"
    make_image(200, 300, "RGB", 0).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"cut\.{fmt.lower()}.*cannot read image file"):
        proc([str(path)])


def test_decompression_bomb(proc, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(40000, 40000))  # 1.6 gigapixels claimed in 33 bytes
    with pytest.raises(ValueError, match=r"bomb\.png.*too large"):
        proc([str(path)])


def test_aspect_ratio_over_200(proc, tmp_path):
    with pytest.raises(ValueError, match=r"image 1 .*aspect ratio must be smaller than 200, got 201"):
        proc([np.zeros((56, 56, 3), np.uint8), PIL.Image.new("RGB", (201, 1))])
    path = tmp_path / "strip.png"
    PIL.Image.new("RGB", (5, 1005)).save(path)
    with pytest.raises(ValueError, match=r"strip\.png.*aspect ratio"):
        proc([str(path)])


def test_one_pixel_and_over_budget_images_work(proc):
    # The reference crashes on HxWx3 arrays with H == 1 (it guesses channels-first); the pixel
    # parity for the correctly-read layout is in test_image_processor_parity.
    one = proc([PIL.Image.new("RGB", (1, 1), (200, 10, 30))])
    np.testing.assert_array_equal(one["image_grid_thw"], [[1, 4, 4]])
    expected = (np.array([200, 10, 30]) / 255 - np.array([0.48145466, 0.4578275, 0.40821073])) / np.array(
        [0.26862954, 0.26130258, 0.27577711]
    )
    np.testing.assert_allclose(
        one["pixel_values"].reshape(16, 3, 2, 14, 14)[:, :, 0, 0, 0], np.tile(expected, (16, 1)), atol=1e-5
    )
    small = Qwen2VLImageProcessor(max_pixels=28 * 28 * 10)
    big = small([PIL.Image.new("RGB", (2000, 1500))])
    _, h, w = big["image_grid_thw"][0]
    assert h * w * 14 * 14 <= 28 * 28 * 10 and (h, w) == (4, 6)


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.zeros((40, 40), np.uint8), "HxWx3 or 3xHxW"),
        (np.zeros((40, 40, 4), np.uint8), "3 channels"),
        (np.zeros((40, 40, 1), np.uint8), "3 channels"),
        (np.full((40, 40, 3), 300, np.int32), r"\[0, 255\]"),
        (np.full((40, 40, 3), 1.5, np.float32), r"\[0, 1\]"),
        (np.full((40, 40, 3), np.nan, np.float32), "NaN or infinity"),
        (np.zeros((0, 40, 3), np.uint8), "zero size"),
    ],
)
def test_bad_arrays(proc, array, reason):
    with pytest.raises(ValueError, match=rf"image 0 \(array .*{reason}"):
        proc([array])


def test_unsupported_type_and_empty(proc):
    with pytest.raises(ValueError, match="image 0 .*unsupported image type int"):
        proc([3])
    with pytest.raises(ValueError, match="no images"):
        proc([])
    with pytest.raises(ValueError, match="zero size"):
        proc([PIL.Image.new("RGB", (0, 5))])


def test_placeholder_mismatch(checkpoint_dir, make_image):
    processor = Qwen2VLProcessor.from_pretrained(checkpoint_dir)
    image = make_image(56, 56, "RGB", 0)
    with pytest.raises(
        ValueError, match=r"2 image\(s\) given but the text has 1 <\|image_pad\|>.*text 0: 1, text 1: 0"
    ):
        processor(text=["<|image_pad|>", "none"], images=[image, image])
    with pytest.raises(ValueError, match=r"1 image\(s\) given but the text has 2"):
        processor(text=["<|image_pad|> and <|image_pad|>"], images=[image])
    with pytest.raises(ValueError, match=r"0 video\(s\) given but the text has 1 <\|video_pad\|>"):
        processor(text="<|video_pad|>")
    with pytest.raises(ValueError, match="different lengths; pass padding=True"):
        processor(text=["a", "a b c d"], return_tensors="np")


def test_one_frame_video_list_works_like_reference(make_pixels):
    out = Qwen2VLVideoProcessor()(videos=[[PIL.Image.fromarray(make_pixels(56, 56, 0))]])
    np.testing.assert_array_equal(out["video_grid_thw"], [[1, 4, 4]])
    rows = out["pixel_values_videos"].reshape(-1, 3, 2, 14, 14)
    np.testing.assert_array_equal(rows[:, :, 0], rows[:, :, 1])  # the frame is repeated


def test_bad_frame_lists(make_pixels):
    proc = Qwen2VLVideoProcessor()
    a, b = make_pixels(56, 56, 0), make_pixels(56, 84, 1)
    with pytest.raises(ValueError, match=r"video 0 .*frame 1 has size \(56, 84\)"):
        proc(videos=[[a, b]])
    with pytest.raises(ValueError, match=r"video 1: frame 0 .*3 channels"):
        proc(videos=[[a], [np.zeros((56, 56, 4), np.uint8)]])
    with pytest.raises(ValueError, match="video 0 .*no frames"):
        proc(videos=[[]])


def test_video_file_with_one_frame(tmp_path, make_pixels, write_video):
    path = tmp_path / "single.mp4"
    write_video(path, make_pixels(48, 64, 0)[None], fps=10)
    with pytest.raises(ValueError, match=r"video 0 .*single\.mp4.*1 frame"):
        Qwen2VLVideoProcessor()(videos=str(path))


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64, "cannot open video|no decodable"),
        (b"junk" * 100, "cannot open video|no decodable"),
    ],
)
def test_video_file_not_decodable(tmp_path, content, reason):
    pytest.importorskip("av")
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"video 0 .*broken\.mp4.*({reason})"):
        Qwen2VLVideoProcessor()(videos=[str(path)])


def test_truncated_video_file(tmp_path, make_pixels, write_video):
    path = tmp_path / "cut.mp4"
    write_video(path, np.stack([make_pixels(48, 64, i) for i in range(20)]), fps=10)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    # An mp4 cut early loses its index (moov atom is written last): nothing decodes.
    with pytest.raises(ValueError, match=r"cut\.mp4"):
        Qwen2VLVideoProcessor()(videos=str(path))


def test_missing_pyav_gives_install_hint(tmp_path, monkeypatch, make_pixels):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"not checked before the import")
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'qwen2vl_jax\[video\]'"):
        Qwen2VLVideoProcessor()(videos=str(path))
