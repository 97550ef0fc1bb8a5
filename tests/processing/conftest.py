"""Shared fixtures for the processing tests: a tiny Qwen-style tokenizer, a checkpoint-like
directory, and deterministic test images. Everything is built in code (no hub, no network)."""

from __future__ import annotations

import json
import os

import numpy as np
import PIL.Image
import pytest

from qwen2vl_jax.testing.tiny_checkpoint import HUB_PREPROCESSOR_CONFIG
from qwen2vl_jax.testing.tiny_checkpoint import build_tiny_tokenizer as _build_tiny_tokenizer

# Copied verbatim from transformers tests/models/qwen2_vl/test_processor_qwen2_vl.py
# (prepare_processor_dict): the independent oracle for our Python chat template.
HF_QWEN2VL_CHAT_TEMPLATE = "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "parity: compares against transformers/torch (skipped without them)")


def build_tiny_tokenizer(directory: str) -> None:
    """The shared tiny tokenizer, with transformers' own copy of the chat template."""
    _build_tiny_tokenizer(directory, chat_template=HF_QWEN2VL_CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A directory laid out like a hub Qwen2-VL-Instruct checkpoint (without weights)."""
    directory = str(tmp_path_factory.mktemp("qwen2vl_ckpt"))
    build_tiny_tokenizer(directory)
    with open(os.path.join(directory, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump(HUB_PREPROCESSOR_CONFIG, f)
    return directory


def structured_pixels(height: int, width: int, seed: int, channels: int = 3) -> np.ndarray:
    """uint8[H, W, C]: gradients + edges + noise, so resampling differences would show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    base = 127 + 100 * np.sin(xx / max(width, 1) * 6.3 + seed) * np.cos(yy / max(height, 1) * 4.1)
    planes = []
    for c in range(channels):
        edge = 60.0 * (((xx // 7) + (yy // 5) + c) % 2)
        noise = rng.normal(0, 20, size=(height, width))
        planes.append(np.clip(base + edge + noise - 30, 0, 255))
    return np.stack(planes, axis=-1).astype(np.uint8)


def make_pil(height: int, width: int, mode: str, seed: int) -> PIL.Image.Image:
    """A PIL image of the given mode built from `structured_pixels`."""
    rgb = PIL.Image.fromarray(structured_pixels(height, width, seed))
    if mode == "I;16":
        # 16-bit values beyond 255 exercise PIL's clipping in convert("RGB").
        wide = structured_pixels(height, width, seed, channels=1)[..., 0].astype(np.uint16) * 3
        return PIL.Image.fromarray(wide)
    if mode == "RGBA":
        alpha = structured_pixels(height, width, seed + 1, channels=1)
        return PIL.Image.fromarray(np.concatenate([structured_pixels(height, width, seed), alpha], -1))
    if mode == "LA":
        alpha = PIL.Image.fromarray(structured_pixels(height, width, seed + 1, channels=1)[..., 0])
        return PIL.Image.merge("LA", (rgb.convert("L"), alpha))
    if mode == "P":
        return rgb.convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=64)
    return rgb if mode == "RGB" else rgb.convert(mode)


@pytest.fixture(scope="session")
def make_image():
    """`make_image(height, width, mode, seed) -> PIL.Image` (see `make_pil`)."""
    return make_pil


@pytest.fixture(scope="session")
def make_pixels():
    """`make_pixels(height, width, seed, channels=3) -> uint8[H, W, C]`."""
    return structured_pixels


@pytest.fixture(scope="session")
def hf_chat_template() -> str:
    """The Jinja template from transformers' Qwen2-VL processor tests."""
    return HF_QWEN2VL_CHAT_TEMPLATE


def _write_video(path, frames: np.ndarray, fps: int = 30) -> None:
    """Encode uint8 [T, H, W, 3] frames with PyAV (mpeg4, no external encoders needed)."""
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture
def write_video():
    """write_video(path, frames, fps=30): encode a small video file for the tests."""
    return _write_video
