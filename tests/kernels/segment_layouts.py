"""Segment-id layouts the kernel tests share: one layout per batch row, so one compile covers all.

Rows (length S, blocks of 16-32 in the tests): segments shorter than a block, segments spanning
block boundaries, single-token segments, real tokens followed by padding (its own id), and one
segment covering everything. Ids are non-decreasing, as in the packed ViT stream and packed text.
"""

import jax.numpy as jnp
import numpy as np

LAYOUTS = ("short", "spanning", "single_tokens", "padding_at_end", "one_segment")


def _from_lengths(lengths, total):
    seg = np.concatenate([np.full(n, i, np.int32) for i, n in enumerate(lengths)])
    assert len(seg) == total, (len(seg), total)
    return seg


def layout(name: str, total: int, rng: np.random.Generator) -> np.ndarray:
    if name == "one_segment":
        return np.zeros(total, np.int32)
    if name == "single_tokens":
        ones = total // 3
        return _from_lengths([1] * ones + [total - ones - 5, 5], total)
    if name == "short":
        lengths = []
        while sum(lengths) < total:
            lengths.append(int(rng.integers(1, 12)))
        lengths[-1] -= sum(lengths) - total
        return _from_lengths([n for n in lengths if n > 0], total)
    if name == "spanning":
        a = total // 3 + 7
        return _from_lengths([a, total - a - 19, 19], total)
    if name == "padding_at_end":
        real = total - total // 4
        return _from_lengths([real // 2, real - real // 2, total - real], total)
    raise ValueError(name)


def batch_of_layouts(total: int, seed: int = 0) -> jnp.ndarray:
    rng = np.random.default_rng(seed)
    return jnp.asarray(np.stack([layout(name, total, rng) for name in LAYOUTS]))


def random_qkv(b, sq, skv, hq, hkv, d, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, sq, hq, d))
    k = rng.standard_normal((b, skv, hkv, d))
    v = rng.standard_normal((b, skv, hkv, d))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def weighted_sum(out):
    """A scalar loss whose cotangent differs per position and feature (a plain sum would not
    exercise the delta term of the softmax backward)."""
    # numpy weights: the same constants under jit and eagerly (XLA's fused cos is not bitwise
    # the eager one, which alone moved dV by 1e-5).
    w = np.cos(np.arange(out.shape[1])[:, None, None] * 0.37 + np.arange(out.shape[-1]) * 0.11)
    return (out.astype(jnp.float32) * jnp.asarray(w, jnp.float32)).sum()


def packed_rows(lengths_per_row, total: int) -> jnp.ndarray:
    """The packed decoder-training layout: per row, samples with segment ids 1..k (lengths as
    given) followed by padding with id 0 up to ``total``. Ids are not sorted (0 comes last)."""
    rows = np.zeros((len(lengths_per_row), total), np.int32)
    for row, lengths in zip(rows, lengths_per_row):
        assert sum(lengths) <= total, (lengths, total)
        row[:sum(lengths)] = np.repeat(np.arange(1, len(lengths) + 1), lengths)
    return jnp.asarray(rows)
