"""Wall-clock helpers of the benchmarks: one timed call, medians, and alternating runs.

Callers block on their results inside ``fn`` (``np.asarray``, ``jax.block_until_ready``):
with JAX's asynchronous dispatch a call returns before the device has finished.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

K = TypeVar("K", bound=Hashable)


def timed(fn: Callable[[], Any], settle_s: float = 0.05) -> float:
    """Seconds one call of ``fn`` takes, after sleeping ``settle_s``: the pause lets the worker
    threads of whatever ran before (OpenMP / Eigen pools of torch or XLA:CPU) stop spinning, so
    they do not steal cores from this call."""
    if settle_s > 0:
        time.sleep(settle_s)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: list[float]) -> float:
    """Run-to-run noise of one measurement: (max - min) / median."""
    return (max(xs) - min(xs)) / median(xs)


def alternate(fns: Mapping[K, Callable[[], Any]], runs: int, settle_s: float = 0.05) -> dict[K, list[float]]:
    """``runs`` rounds, each timing every function once in the mapping's order: interleaving
    spreads slow phases of the machine (other processes, clock changes) over all of them alike
    instead of penalising whichever ran during the slow phase. Warm up (compile) first."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    times: dict[K, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for key, fn in fns.items():
            times[key].append(timed(fn, settle_s))
    return times
