"""Expanding `<|image_pad|>` / `<|video_pad|>` to one token per merged patch (docs/preprocessing.md)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def tokens_per_item(grid_thw: np.ndarray | None, merge_size: int) -> list[int]:
    """int64[n, 3] grids -> LLM tokens per image/video: t * h * w / merge_size**2."""
    if grid_thw is None:
        return []
    grid = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
    return [int(n) for n in grid.prod(axis=1) // (merge_size**2)]


def expand_placeholders(texts: Sequence[str], token: str, counts: Sequence[int], kind: str) -> list[str]:
    """Replace the k-th `token` (counted over ALL texts in order) by `counts[k]` copies.

    Raises:
        ValueError: the texts hold more or fewer `token`s than there are `counts`; the message
            names the text and how many of each were found.
    """
    found = [text.count(token) for text in texts]
    if sum(found) != len(counts):
        per_text = ", ".join(f"text {i}: {n}" for i, n in enumerate(found))
        raise ValueError(
            f"{len(counts)} {kind}(s) given but the text has {sum(found)} {token} placeholder(s) "
            f"({per_text}); put exactly one {token} per {kind}"
        )
    expanded, k = [], 0
    for text in texts:
        pieces = text.split(token)
        out = [pieces[0]]
        for piece in pieces[1:]:
            out.append(token * counts[k])
            out.append(piece)
            k += 1
        expanded.append("".join(out))
    return expanded
