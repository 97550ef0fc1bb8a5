"""A synthetic visual question-answering task whose answers must be read from the image.

Each picture (of a varied size and aspect ratio, so dynamic resolution and the token buckets are
exercised) shows a coloured shape and either a word or a digit, each in a random cell of the
picture, in random colours and ink. The question asks for one of the four facts:

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

WORDS = ("cat", "dog", "sun", "fish", "bird", "moon", "car", "hat")
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
# Pictures are grids of 56 x 56 px cells (2 x 2 merged vision tokens each; sides are multiples of
# 28 = patch 14 x merge 2, so no resize is needed). Sizes: 112x112, 168x56, 168x112, 224x56, 224x112.
CELL = 56
SIZES = ((112, 112), (168, 56), (168, 112), (224, 56), (224, 112))
WIDTHS = tuple(sorted({w for w, _ in SIZES}))
HEIGHTS = tuple(sorted({h for _, h in SIZES}))


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

    Layout: the picture is a grid of 56 x 56 px cells (2 x 2 merged vision tokens each). The shape
    fills one cell, a digit another, a word two side by side; which cells is random. Large glyphs
    aligned to the token grid are what let a ~1M-parameter model learn to read them in minutes on
    a CPU (small ones at random offsets did not: the colour question alone stayed at chance);
    the picture sizes and aspect ratios still vary (five sizes, 1:1 to 4:1).

    Args:
        num_records: the source's length (records are generated on demand, nothing is stored).
        seed: held-out sets use another seed.
        tasks: which questions to ask (a subset of ``TASKS``).
        system: the system message ("" = an empty one, which keeps sequences short; None = the
            chat template's default "You are a helpful assistant.").
        all_questions: ask every question the picture can answer (word or number, colour, shape;
            within ``tasks``), one turn each in a random order, instead of one: three times the
            supervision per picture for training. Held-out sets keep one question per record.
    """

    def __init__(self, num_records: int = 100_000, seed: int = 0, tasks: tuple[str, ...] = TASKS,
                 system: str | None = "", all_questions: bool = False):
        if num_records < 1:
            raise ValueError(f"num_records must be >= 1, got {num_records}")
        unknown = set(tasks) - set(TASKS)
        if unknown or not tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks}")
        self.num_records, self.seed, self.tasks, self.system = num_records, seed, tuple(tasks), system
        self.all_questions = all_questions

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_records:
            raise IndexError(f"record {index} out of range [0, {self.num_records})")
        rng = np.random.default_rng([self.seed, index])
        pick = lambda seq: seq[int(rng.integers(len(seq)))]
        task = pick(self.tasks)
        width, height = pick(SIZES)
        cols, rows = width // CELL, height // CELL
        colour = pick(tuple(COLOURS))
        shape = pick(SHAPES)
        # A word or a digit is always drawn; the question decides which one it must be.
        shows_word = task == "word" or (task != "number" and rng.random() < 0.5)
        text = pick(WORDS) if shows_word else pick(DIGITS)

        image = Image.new("RGB", (width, height), tuple(int(x) for x in rng.integers(200, 256, size=3)))
        draw = ImageDraw.Draw(image)
        span = 2 if shows_word else 1  # cells the text occupies, side by side
        tr, tc = int(rng.integers(rows)), int(rng.integers(cols - span + 1))
        free = [(r, c) for r in range(rows) for c in range(cols) if not (r == tr and tc <= c < tc + span)]
        sr, sc = free[int(rng.integers(len(free)))]
        m = 5  # margin inside the shape's cell
        _draw_shape(draw, shape, (sc * CELL + m, sr * CELL + m, (sc + 1) * CELL - m - 1, (sr + 1) * CELL - m - 1),
                    COLOURS[colour])
        font = _font(44 if span == 1 else 34)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        cx, cy = (tc + span / 2) * CELL, (tr + 0.5) * CELL  # centred in its cells
        ink = tuple(int(x) for x in rng.integers(0, 70, size=3))
        draw.text((round(cx - (left + right) / 2), round(cy - (top + bottom) / 2)), text, fill=ink, font=font)

        answers = {"word": text, "number": text, "colour": colour, "shape": shape}
        asked = [task]
        if self.all_questions:
            asked = [t for t in ("word" if shows_word else "number", "colour", "shape") if t in self.tasks]
            asked = [asked[int(j)] for j in rng.permutation(len(asked))]
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        for k, t in enumerate(asked):
            content = ([{"type": "image"}] if k == 0 else []) + [{"type": "text", "text": QUESTIONS[t]}]
            messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answers[t]}]
        return {"messages": messages, "images": [buf.getvalue()], "videos": []}


def _question_and_answer(record: dict[str, Any]) -> tuple[str, str]:
    user = next(m for m in record["messages"] if m["role"] == "user")
    answer = next(m for m in record["messages"] if m["role"] == "assistant")
    question = "".join(x.get("text", "") for x in user["content"] if x.get("type") == "text")
    return question, answer["content"]


def blind_baseline(train: SyntheticVisualQA, held_out: SyntheticVisualQA, num_train: int = 2000) -> float:
    """Exact match of the best answer-without-looking policy: for each question, the answer most
    frequent in (the first ``num_train`` records of) the training set, scored on ``held_out``."""
    counts: dict[str, dict[str, int]] = {}
    for i in range(min(num_train, len(train))):
        q, a = _question_and_answer(train[i])
        counts.setdefault(q, {}).setdefault(a, 0)
        counts[q][a] += 1
    best = {q: max(c, key=c.get) for q, c in counts.items()}
    hits = 0
    for i in range(len(held_out)):
        q, a = _question_and_answer(held_out[i])
        hits += best.get(q) == a
    return hits / len(held_out)
