"""Mixture: exact proportions, determinism, coverage rules, provenance, grain composition."""

import collections
import pickle

import pytest

from data_pipelines.jsonl_source import error_record
from data_pipelines.mixture import Mixture, draws_before, integer_weights, locate_draw, permute, source_of


class Range:
    """A tiny random-access source: record j of source `name`."""

    def __init__(self, name, n):
        self.name, self.n = name, n

    def __len__(self):
        return self.n

    def __getitem__(self, j):
        if not 0 <= j < self.n:
            raise IndexError(j)
        return {"messages": [], "images": [], "videos": [], "id": (self.name, j)}


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 1000, 4097])
def test_permute_is_a_bijection(n):
    for key in (0, 1, 12345):
        assert sorted(permute(i, n, key) for i in range(n)) == list(range(n))
    if n > 16:
        assert [permute(i, n, 1) for i in range(n)] != [permute(i, n, 2) for i in range(n)]


def test_prefix_counts_are_exact_within_one():
    weights = integer_weights([0.7, 0.2, 0.1])
    assert weights == (7, 2, 1)
    seen = [0, 0, 0]
    for i in range(2000):
        k, draw = locate_draw(i, weights)
        assert draw == seen[k]  # the draw index is the running count of that source
        seen[k] += 1
        for c, w in zip(draws_before(i + 1, weights), weights):
            assert abs(c - (i + 1) * w / 10) <= 1
        assert draws_before(i + 1, weights) == seen
    assert integer_weights([1, 0, 3]) == (1, 0, 3)
    with pytest.raises(ValueError):
        integer_weights([0, 0])
    with pytest.raises(ValueError):
        integer_weights([1, -1])


def test_proportions_and_max_coverage():
    images, text = Range("images", 900), Range("text", 40)
    mix = Mixture([images, text], [0.9, 0.1], seed=3)
    ids = [mix[i]["id"] for i in range(len(mix))]
    counts = collections.Counter(name for name, _ in ids)
    assert len(mix) == 1000 and counts == {"images": 900, "text": 100}
    assert {j for name, j in ids if name == "images"} == set(range(900))  # every record at least once
    text_draws = [j for name, j in ids if name == "text"]
    for epoch in range(2):  # a repeated source is a fresh permutation each pass
        assert sorted(text_draws[40 * epoch:40 * (epoch + 1)]) == list(range(40))
    assert text_draws[:40] != text_draws[40:80]
    # any window of the stream is close to 90/10
    window = collections.Counter(name for name, _ in ids[500:600])
    assert abs(window["text"] - 10) <= 1
    assert mix.counts() == {"images": 900, "text": 100}


def test_min_and_fixed_lengths():
    a, b = Range("a", 100), Range("b", 30)
    mix = Mixture([a, b], [1, 1], num_records="min")
    ids = [mix[i]["id"] for i in range(len(mix))]
    assert len(mix) == 60 and len(set(ids)) == 60  # no record twice
    assert len(Mixture([a, b], [1, 1], num_records=7)) == 7
    with pytest.raises(ValueError):
        Mixture([a, b], [1, 1], num_records=0)


def test_determinism_seed_and_pickling():
    srcs = [Range("a", 50), Range("b", 20)]
    m1, m2 = Mixture(srcs, [2, 1], seed=7), Mixture(srcs, [2, 1], seed=7)
    stream = [m1[i]["id"] for i in range(len(m1))]
    assert stream == [m2[i]["id"] for i in range(len(m2))]
    assert stream != [Mixture(srcs, [2, 1], seed=8)[i]["id"] for i in range(len(m1))]
    clone = pickle.loads(pickle.dumps(m1))
    assert [clone[i]["id"] for i in range(len(clone))] == stream
    assert m1.__getitems__([5, 1]) == [m1[5], m1[1]]
    ordered = Mixture(srcs, [2, 1], shuffle_sources=False)
    assert [ordered[i]["id"] for i in range(6)] == [("a", 0), ("a", 1), ("b", 0),
                                                    ("a", 2), ("a", 3), ("b", 1)]


def test_provenance_names_and_errors():
    class Broken:
        def __len__(self):
            return 2

        def __getitem__(self, j):
            return error_record(f"bad {j}")

    inner = Mixture([Range("x", 4), Range("y", 4)], names=["x", "y"])
    outer = Mixture([inner, Broken(), Range("x", 3)], [2, 1, 1])
    assert outer.names == ("Mixture0", "Broken1", "x")
    seen = collections.Counter(source_of(outer[i]) for i in range(len(outer)))
    assert set(seen) == {"Mixture0/x", "Mixture0/y", "Broken1", "x"}
    k, _ = outer.locate(3)
    assert outer.source_name(3) == outer.names[k]
    errors = [outer[i] for i in range(len(outer)) if "_error" in outer[i]]
    assert errors and all(source_of(r) == "Broken1" for r in errors)
    assert "_source" not in Mixture([Range("x", 2)], tag=False)[0]
    assert Mixture([Range("x", 2), Range("x", 2)]).names == ("x#0", "x#1")
    with pytest.raises(ValueError, match="distinct"):
        Mixture([Range("x", 2), Range("y", 2)], names=["s", "s"])
    with pytest.raises(ValueError, match="empty"):
        Mixture([Range("x", 2), Range("y", 0)])
    zero = Mixture([Range("x", 5), Range("never", 0)], [1, 0])
    assert len(zero) == 5 and all(source_of(zero[i]) == "x" for i in range(5))
    with pytest.raises(IndexError):
        zero[5]


def test_composes_with_grain_shuffle_and_sharding():
    grain = pytest.importorskip("grain")
    mix = Mixture([Range("a", 30), Range("b", 10)], [3, 1], seed=0)
    ds = grain.MapDataset.source(mix).shuffle(seed=11)
    first = [ds[i]["id"] for i in range(len(ds))]
    assert first == [grain.MapDataset.source(mix).shuffle(seed=11)[i]["id"] for i in range(len(ds))]
    assert sorted(first) == sorted(mix[i]["id"] for i in range(len(mix)))
    shards = [[r["id"] for r in ds[s::2]] for s in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(first)
