"""A synthetic visual question-answering task whose answers must be read from the image.

Each picture (of a varied size and aspect ratio, so dynamic resolution and the token buckets are
exercised) shows a coloured shape and either a word or a digit, drawn at a random place, size and
ink. The question asks for one of the four facts:

    "What word is written?"      -> the word     (only asked when a word is drawn)
    "What number is shown?"      -> the digit    (only asked when a digit is drawn)
    "What colour is the shape?"  -> the colour
    "What shape is drawn?"       -> the shape

No question can be answered without looking: within each question the answers are uniform, so
the best blind policy (the most frequent answer per question) scores about 1/4..1/10.

Record ``i`` is a pure function of ``(seed, i)`` (no global RNG), so any worker process can
produce any record and a restored iterator continues the exact stream. Images are PNG bytes in
the canonical record. Fonts are loaded lazily per process (FreeType fonts do not pickle).
"""

from __future__ import annotations

import functools
import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

WORDS = ("cat", "dog", "sun", "tree", "fish", "bird", "moon", "star", "car", "hat", "cup", "book")
DIGITS = tuple(str(d) for d in range(10))
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 200, 0),
           "purple": (140, 40, 170), "orange": (245, 130, 0)}
SHAPES = ("circle", "square", "triangle", "diamond")
QUESTIONS = {
    "word": "What word is written?",
    "number": "What number is shown?",
    "colour": "What colour is the shape?",
    "shape": "What shape is drawn?",
}
TASKS = tuple(QUESTIONS)
# Picture sides in pixels: multiples of 28 (patch 14 x merge 2), so no resize is needed and the
# grid is exactly side / 14.
WIDTHS = (56, 84, 112, 140, 168)
HEIGHTS = (56, 84, 112)


@functools.cache
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def answer_vocabulary() -> list[str]:
    """Every possible answer (to make sure a tokenizer covers them)."""
    return [*WORDS, *DIGITS, *COLOURS, *SHAPES]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # diamond
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)


class SyntheticVisualQA:
    """A random-access source (``len`` + ``__getitem__``), as grain expects.

    Args:
        num_records: the source's length (records are generated on demand, nothing is stored).
        seed: held-out sets use another seed.
        tasks: which questions to ask (a subset of ``TASKS``).
    """

    def __init__(self, num_records: int = 100_000, seed: int = 0, tasks: tuple[str, ...] = TASKS):
        if num_records < 1:
            raise ValueError(f"num_records must be >= 1, got {num_records}")
        unknown = set(tasks) - set(TASKS)
        if unknown or not tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks}")
        self.num_records, self.seed, self.tasks = num_records, seed, tuple(tasks)

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_records:
            raise IndexError(f"record {index} out of range [0, {self.num_records})")
        rng = np.random.default_rng([self.seed, index])
        pick = lambda seq: seq[int(rng.integers(len(seq)))]
        task = pick(self.tasks)
        width, height = pick(WIDTHS), pick(HEIGHTS)
        colour = pick(tuple(COLOURS))
        shape = pick(SHAPES)
        # A word or a digit is always drawn; the question decides which one it must be.
        shows_word = task == "word" or (task != "number" and rng.random() < 0.5)
        text = pick(WORDS) if shows_word else pick(DIGITS)

        image = Image.new("RGB", (width, height), tuple(int(x) for x in rng.integers(200, 256, size=3)))
        draw = ImageDraw.Draw(image)
        side = int(rng.integers(18, min(width, height) // 2 + 8))
        # The shape sits in one half of the picture and the text in the other, so they never overlap.
        shape_left = bool(rng.integers(2)) if width >= height else True
        half = width // 2 if width >= height else width
        sx = int(rng.integers(0, max(1, half - side))) + (0 if shape_left else width - half)
        sy = int(rng.integers(0, max(1, height - side))) if width >= height else int(rng.integers(0, max(1, height // 2 - side)))
        _draw_shape(draw, shape, (sx, sy, sx + side, sy + side), COLOURS[colour])

        if width >= height:
            region = (width - half, 0, width, height) if shape_left else (0, 0, half, height)
        else:
            region = (0, height // 2, width, height)
        size = int(rng.integers(16, 25))
        while True:  # the largest size <= the drawn one at which the text fits its region
            font = _font(size)
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            tw, th = right - left, bottom - top
            if size <= 10 or (tw <= region[2] - region[0] - 2 and th <= region[3] - region[1] - 2):
                break
            size -= 1
        tx = region[0] + int(rng.integers(0, max(1, region[2] - region[0] - tw)))
        ty = region[1] + int(rng.integers(0, max(1, region[3] - region[1] - th)))
        ink = tuple(int(x) for x in rng.integers(0, 70, size=3))
        draw.text((tx - left, ty - top), text, fill=ink, font=font)

        answer = {"word": text, "number": text, "colour": colour, "shape": shape}[task]
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return {
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[task]}]},
                {"role": "assistant", "content": answer},
            ],
            "images": [buf.getvalue()],
            "videos": [],
        }


def blind_baseline(train: SyntheticVisualQA, held_out: SyntheticVisualQA, num_train: int = 2000) -> float:
    """Exact match of the best answer-without-looking policy: for each question, the answer most
    frequent in (the first ``num_train`` records of) the training set, scored on ``held_out``."""
    counts: dict[str, dict[str, int]] = {}
    for i in range(min(num_train, len(train))):
        r = train[i]
        q, a = r["messages"][0]["content"][1]["text"], r["messages"][1]["content"]
        counts.setdefault(q, {}).setdefault(a, 0)
        counts[q][a] += 1
    best = {q: max(c, key=c.get) for q, c in counts.items()}
    hits = 0
    for i in range(len(held_out)):
        r = held_out[i]
        hits += best.get(r["messages"][0]["content"][1]["text"]) == r["messages"][1]["content"]
    return hits / len(held_out)
