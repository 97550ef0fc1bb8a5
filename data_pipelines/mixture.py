"""A deterministic, random-access blend of several sources with given weights.

``Mixture(sources, weights, seed)[i]`` is a pure function of ``(weights, lengths, seed, i)``:
position ``i`` maps to ``(source k, record j)`` in O(number of sources) time and memory, so the
mixture is itself a random-access source (``__len__`` + ``__getitem__``) that composes with grain's
global shuffle and index-based sharding (``grain.MapDataset.source(mixture).shuffle(...)``,
``[shard::num_shards]``), and a restored iterator continues the exact stream.

How positions are assigned: the first ``n`` positions hold ``round(n * w_k / sum(w))`` records of
source ``k``, give or take one, for every ``n`` (a deterministic interleave, so proportions are
exact in every window, not only on average; the global shuffle downstream makes the order
random). The ``s``-th draw from source ``k`` is record ``perm(seed, k, epoch)(s % len_k)`` with
``epoch = s // len_k``: a source smaller than its share is repeated, each pass in a fresh
pseudo-random order (a keyed Feistel permutation, O(1) memory), so repeats are spread evenly.

Length (``num_records``): ``"max"`` (default) is the shortest mixture in which every record of
every source appears at least once (smaller sources are repeated, e.g. a small text-only set
blended into a large image set); ``"min"`` is the longest in which no record repeats (larger
sources are truncated: what ``grain.MapDataset.mix`` does); an int sets it directly.

Why not ``grain.MapDataset.mix``: it fixes the length to the ``"min"`` rule above, so a small
source (text-only at 10%) truncates a large one to ten times its own size, and it repeats
nothing; it also returns no provenance, and it is a ``MapDataset`` rather than a plain source
that ``sources.open_source`` can nest and that the pipeline wraps like any other source. The
index arithmetic here is the same kind (integer proportions, exact prefix counts).

Provenance: each record is returned as a shallow copy with ``record["_source"] = name`` (set
``tag=False`` to return records untouched); nested mixtures give ``"outer/inner"``. Use
``source_of(record)`` or ``Mixture.locate(i)`` / ``Mixture.source_name(i)`` for metrics. Error
records (``_error``, see ``jsonl_source``) pass through, tagged like any other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

SOURCE_KEY = "_source"
_MASK64 = (1 << 64) - 1
_ROUNDS = 4


def _mix64(x: int) -> int:
    """A 64-bit integer hash (the splitmix64 finaliser)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def permute(index: int, n: int, key: int) -> int:
    """A keyed pseudo-random permutation of ``range(n)``: a balanced Feistel network on the
    smallest even-bit domain covering ``n``, cycle-walking until the value falls below ``n``."""
    if n <= 1:
        return index
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1
    round_keys = [_mix64(key * _ROUNDS + r) for r in range(_ROUNDS)]
    x = index
    while True:
        left, right = x >> half, x & mask
        for rk in round_keys:
            left, right = right, left ^ (_mix64(right ^ rk) & mask)
        x = (left << half) | right
        if x < n:
            return x


def integer_weights(weights: Sequence[float]) -> tuple[int, ...]:
    """Non-negative weights -> the smallest integers in the same ratio (floats via fractions
    with denominators up to 10**6)."""
    fracs = []
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, (int, float, Fraction)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weights must be finite numbers >= 0, got {w!r}")
        fracs.append(Fraction(w).limit_denominator(10**6))
    if not any(fracs):
        raise ValueError("at least one weight must be positive")
    scale = math.lcm(*(f.denominator for f in fracs))
    ints = [int(f * scale) for f in fracs]
    g = math.gcd(*ints)
    return tuple(i // g for i in ints)


def draws_before(n: int, weights: Sequence[int]) -> list[int]:
    """How many of the first ``n`` positions go to each source."""
    remaining, total, counts = n, sum(weights), []
    for w in weights:
        rest = total - w
        take = remaining - (remaining * rest) // total if total else 0
        counts.append(take)
        remaining, total = remaining - take, rest
    return counts


def locate_draw(index: int, weights: Sequence[int]) -> tuple[int, int]:
    """Position ``index`` -> (source k, how many earlier positions went to source k)."""
    total = sum(weights)
    n0, n1 = index, index + 1
    for k, w in enumerate(weights):
        rest = total - w
        a0 = n0 - (n0 * rest) // total
        a1 = n1 - (n1 * rest) // total
        if a1 > a0:
            return k, a0
        n0, n1, total = n0 - a0, n1 - a1, rest
    raise AssertionError("unreachable: the last positive weight takes every remaining position")


def source_of(record: dict[str, Any]) -> str | None:
    """The name of the mixture component a record came from (None if untagged)."""
    return record.get(SOURCE_KEY)


def default_name(source: Any, index: int) -> str:
    name = getattr(source, "name", None)
    if isinstance(name, str) and name:
        return name
    path = getattr(source, "path", None)
    if isinstance(path, str) and path:
        base = path.rstrip("/").rsplit("/", 1)[-1]
        return base.rsplit(".", 1)[0] or base
    return f"{type(source).__name__}{index}"


class Mixture:
    """Blend ``sources`` with ``weights``; see the module docstring."""

    def __init__(self, sources: Sequence[Any], weights: Sequence[float] | None = None, seed: int = 0,
                 num_records: int | str = "max", names: Sequence[str] | None = None,
                 tag: bool = True, shuffle_sources: bool = True):
        sources = list(sources)
        if not sources:
            raise ValueError("a mixture needs at least one source")
        weights = [1.0] * len(sources) if weights is None else list(weights)
        if len(weights) != len(sources):
            raise ValueError(f"{len(sources)} sources but {len(weights)} weights")
        self.weights = integer_weights(weights)
        self.lengths = tuple(len(s) for s in sources)
        for k, (w, n) in enumerate(zip(self.weights, self.lengths)):
            if w > 0 and n == 0:
                raise ValueError(f"source {k} is empty but has weight {weights[k]}")
        if names is None:
            names = [default_name(s, k) for k, s in enumerate(sources)]
            seen: dict[str, int] = {}
            for name in names:
                seen[name] = seen.get(name, 0) + 1
            names = [f"{n}#{k}" if seen[n] > 1 else n for k, n in enumerate(names)]
        elif len(names) != len(sources) or len(set(names)) != len(names):
            raise ValueError(f"names must be {len(sources)} distinct strings, got {list(names)}")
        self.sources, self.names, self.seed = sources, tuple(str(n) for n in names), int(seed)
        self.tag, self.shuffle_sources = tag, shuffle_sources
        self.num_records = self._resolve_length(num_records)

    def _resolve_length(self, num_records: int | str) -> int:
        total = sum(self.weights)
        active = [(w, n) for w, n in zip(self.weights, self.lengths) if w > 0]
        if num_records == "max":  # every record at least once
            need = max(-(-n * total // w) for w, n in active)
            while any(c < n for c, w, n in zip(draws_before(need, self.weights), self.weights, self.lengths)
                      if w):
                need += 1  # the prefix counts may fall one short of the ratio
            return need
        if num_records == "min":  # no record twice
            need = min(n * total // w for w, n in active)
            while need > 0 and any(c > n for c, n in zip(draws_before(need, self.weights), self.lengths)):
                need -= 1
            if need == 0:
                raise ValueError("num_records='min' leaves an empty mixture")
            return need
        if isinstance(num_records, bool) or not isinstance(num_records, int) or num_records < 1:
            raise ValueError(f"num_records must be 'max', 'min' or a positive int, got {num_records!r}")
        return num_records

    def __len__(self) -> int:
        return self.num_records

    def locate(self, index: int) -> tuple[int, int]:
        """Position ``index`` -> (source k, record j of source k)."""
        index = int(index)
        if not 0 <= index < self.num_records:
            raise IndexError(f"record {index} out of range [0, {self.num_records})")
        k, draw = locate_draw(index, self.weights)
        epoch, offset = divmod(draw, self.lengths[k])
        if not self.shuffle_sources:
            return k, offset
        key = _mix64((_mix64(self.seed) ^ (k * 0x632BE59BD9B4E019)) + epoch)
        return k, permute(offset, self.lengths[k], key)

    def source_name(self, index: int) -> str:
        return self.names[self.locate(index)[0]]

    def counts(self, n: int | None = None) -> dict[str, int]:
        """How many of the first ``n`` positions (default: all) each source fills."""
        n = self.num_records if n is None else n
        return dict(zip(self.names, draws_before(n, self.weights)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        k, j = self.locate(index)
        record = self.sources[k][j]
        if not self.tag or not isinstance(record, dict):
            return record
        inner = record.get(SOURCE_KEY)
        return {**record, SOURCE_KEY: self.names[k] if inner is None else f"{self.names[k]}/{inner}"}

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: w={w} len={ln}" for n, w, ln in zip(self.names, self.weights, self.lengths))
        return f"Mixture([{parts}], seed={self.seed}, len={self.num_records})"
