"""The sweep's grid (``qwen2vl-jax bench --sweep``): its points, their inputs, and what each
bucket ladder compiles for them. numpy only (no jax, no torch).

A point is (batch, vision, text): every row holds the same kind of vision input (fresh random
pixels) and ``text`` text tokens, split around it; in a batch of 4, row r has 3 r fewer text
tokens, so rows are left-padded (as a processor pads them).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

import numpy as np

from qwen2vl_jax.bench.inputs import FIRST_TEXT_ID, IMAGE, PAD, VIDEO, VISION_END, VISION_START

# Vision inputs: (kind, grids (t, h, w) in patches). 16 video frames = 8 temporal patches.
VISION: dict[str, tuple[str, tuple[tuple[int, int, int], ...]]] = {
    "none": ("image", ()),
    "img256": ("image", ((1, 16, 16),)),
    "img1024": ("image", ((1, 32, 32),)),
    "img4096": ("image", ((1, 64, 64),)),
    "4img1024": ("image", ((1, 32, 32), (1, 16, 64), (1, 64, 16), (1, 8, 128))),
    "video16": ("video", ((8, 16, 16),)),
}
BATCHES = (1, 4)
TEXTS = (32, 512, 2048)
MERGE = 2


@dataclasses.dataclass(frozen=True)
class Point:
    batch: int
    vision: str
    text: int

    @property
    def name(self) -> str:
        return f"b{self.batch}-{self.vision}-t{self.text}"

    @property
    def grids(self) -> tuple[tuple[int, int, int], ...]:
        return VISION[self.vision][1]

    @property
    def patches_per_row(self) -> int:
        return int(sum(t * h * w for t, h, w in self.grids))

    @property
    def vision_tokens_per_row(self) -> int:
        return self.patches_per_row // MERGE**2


GRID = tuple(Point(b, v, t) for b in BATCHES for v in VISION for t in TEXTS)


def select(patterns: str | None) -> list[Point]:
    """Points whose names match any comma-separated fnmatch pattern (all when None)."""
    if not patterns:
        return list(GRID)
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [p for p in GRID if any(fnmatch.fnmatchcase(p.name, pat) for pat in pats)]
    if not chosen:
        raise ValueError(f"--points {patterns!r} matches no point; names look like {GRID[0].name}, "
                         f"{GRID[-1].name} (batch {BATCHES}, vision {tuple(VISION)}, text {TEXTS})")
    return chosen


def make_point_inputs(point: Point, rng: np.random.Generator, patch_dim: int, vocab: int) -> dict[str, np.ndarray]:
    """HF-style numpy inputs of one point (left-padded rows; the keys transformers takes)."""
    kind, grids = VISION[point.vision]
    return make_rows(point.batch, grids, point.text, kind, rng, patch_dim, vocab)


def make_rows(batch: int, grids, text: int, kind: str, rng: np.random.Generator, patch_dim: int,
              vocab: int) -> dict[str, np.ndarray]:
    """``batch`` left-padded rows; row r holds ``text - 3 r`` random text tokens, the first half
    before and the rest after the placeholders of every grid of ``grids`` (images, or videos
    with kind "video"); fresh random pixels."""
    placeholder = IMAGE if kind == "image" else VIDEO
    rows = []
    for r in range(batch):
        n_text = text - 3 * r
        before = n_text // 2
        ids = rng.integers(FIRST_TEXT_ID, vocab, size=before).tolist()
        for t, h, w in grids:
            ids += [VISION_START] + [placeholder] * (t * h * w // MERGE**2) + [VISION_END]
        ids += rng.integers(FIRST_TEXT_ID, vocab, size=n_text - before).tolist()
        rows.append(ids)
    s = max(len(r) for r in rows)
    input_ids = np.full((len(rows), s), PAD, np.int64)
    mask = np.zeros((len(rows), s), np.int64)
    for i, r in enumerate(rows):
        input_ids[i, s - len(r):], mask[i, s - len(r):] = r, 1
    out = {"input_ids": input_ids, "attention_mask": mask}
    if grids:
        n = batch * int(sum(t * h * w for t, h, w in grids))
        pix = rng.standard_normal((n, patch_dim)).astype(np.float32)
        grid = np.array(list(grids) * batch, np.int64)
        key = "" if kind == "image" else "_videos"
        out[f"pixel_values{key}"], out[f"{kind}_grid_thw"] = pix, grid
    return out


def bucket_shapes(point: Point, buckets: Any, new_tokens: int) -> dict[str, Any]:
    """The compiled shapes ``point`` runs at under ``buckets`` (a ``BucketConfig``)."""
    from qwen2vl_jax.generation.cache import cache_length
    from qwen2vl_jax.layout.buckets import choose_bucket

    s = point.text + point.vision_tokens_per_row + 2 * len(point.grids)  # row 0 is the longest
    S = choose_bucket(s, buckets.text_buckets, "text length")
    B = choose_bucket(point.batch, buckets.batch_buckets, "batch size")
    n = point.batch * point.patches_per_row
    P = choose_bucket(n, buckets.patch_buckets, "number of vision patches") if n else None
    caches = {m: cache_length(S, m, buckets.cache_multiple) for m in (1, new_tokens)}
    real_tokens = sum(s - 3 * r for r in range(point.batch))
    return {"batch": B, "text": S, "patches": P, "caches": caches, "real_tokens": real_tokens,
            "padded_tokens": B * S, "real_patches": n, "padded_patches": P or 0}


def ladder_report(points: list[Point], ladders: dict[str, Any], new_tokens: int) -> dict[str, dict]:
    """Per ladder: programs our side compiles for ``points`` (forward, prefill per cache length,
    decode per state shape) and the padding it adds (fraction of the padded size)."""
    out = {}
    for name, buckets in ladders.items():
        fwd, prefill, decode = set(), set(), set()
        real = padded = real_p = padded_p = 0
        for p in points:
            sh = bucket_shapes(p, buckets, new_tokens)
            fwd.add((sh["batch"], sh["text"], sh["patches"]))
            for cache in sh["caches"].values():  # generate(1) and generate(new_tokens)
                prefill.add((sh["batch"], sh["text"], sh["patches"], cache))
            decode.add((sh["batch"], sh["caches"][new_tokens]))  # generate(1) never decodes
            real, padded = real + sh["real_tokens"], padded + sh["padded_tokens"]
            real_p, padded_p = real_p + sh["real_patches"], padded_p + sh["padded_patches"]
        out[name] = {"programs": len(fwd) + len(prefill) + len(decode), "forward": len(fwd),
                     "prefill": len(prefill), "decode": len(decode),
                     "text_padding": 1 - real / padded, "patch_padding": 1 - real_p / padded_p if padded_p else 0.0,
                     "text_buckets": len(buckets.text_buckets), "patch_buckets": len(buckets.patch_buckets)}
    return out
