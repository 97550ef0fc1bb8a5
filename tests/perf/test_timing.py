"""The benchmarks' timing helpers: alternating runs, medians, spread."""

import time

import pytest

from qwen2vl_jax.perf.timing import alternate, median, spread, timed


def test_alternate_interleaves_in_order():
    calls = []
    times = alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs=3, settle_s=0)
    assert calls == ["a", "b"] * 3
    assert list(times) == ["a", "b"] and all(len(v) == 3 and min(v) >= 0 for v in times.values())
    with pytest.raises(ValueError):
        alternate({"a": lambda: None}, runs=0)


def test_timed_measures_the_call_not_the_settling_pause():
    t = timed(lambda: time.sleep(0.02), settle_s=0.05)
    assert 0.02 <= t < 0.05


def test_median_and_spread():
    assert median([3.0, 1.0, 2.0]) == 2.0 and median([1.0, 2.0]) == 1.5
    assert spread([1.0, 2.0, 3.0]) == 1.0
