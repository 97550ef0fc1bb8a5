"""A synthetic "learn to read" dataset: a word drawn on a picture; the answer is the word.

Record ``i`` is a pure function of ``(seed, i)`` (no global RNG), so any worker can produce any
record and a restored iterator continues the exact stream. Images are returned as PNG bytes in
the canonical record (``images`` entries may be bytes, paths or PIL images).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = ("cat", "dog", "sun", "tree", "blue", "red", "fish", "bird", "moon", "star", "car", "hat",
         "cup", "book", "door", "milk")
QUESTIONS = ("What is written in the image?", "Read the word in the picture.", "Which word is shown?")


class SyntheticReadingSource:
    """A random-access source (``len`` + ``__getitem__``), as grain expects."""

    def __init__(self, num_records: int = 10_000, seed: int = 0, size: tuple[int, int] = (112, 56),
                 words: tuple[str, ...] = WORDS):
        if num_records < 1:
            raise ValueError(f"num_records must be >= 1, got {num_records}")
        self.num_records, self.seed, self.size, self.words = num_records, seed, size, words
        self._font = ImageFont.load_default()

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_records:
            raise IndexError(f"record {index} out of range [0, {self.num_records})")
        rng = np.random.default_rng([self.seed, index])
        word = self.words[int(rng.integers(len(self.words)))]
        question = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
        background = tuple(int(x) for x in rng.integers(180, 256, size=3))
        ink = tuple(int(x) for x in rng.integers(0, 90, size=3))
        image = Image.new("RGB", self.size, background)
        draw = ImageDraw.Draw(image)
        left, top, right, bottom = draw.textbbox((0, 0), word, font=self._font)
        w, h = right - left, bottom - top
        x = int(rng.integers(0, max(1, self.size[0] - w)))
        y = int(rng.integers(0, max(1, self.size[1] - h)))
        draw.text((x - left, y - top), word, fill=ink, font=self._font)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return {
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
                {"role": "assistant", "content": word},
            ],
            "images": [buf.getvalue()],
            "videos": [],
        }
