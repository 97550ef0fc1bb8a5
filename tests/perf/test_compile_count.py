"""CompileCounter sees a new executable, not a cached one, and stops listening on exit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qwen2vl_jax.perf.compile_count import CompileCounter


def test_counts_new_programs_only():
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)
    x5, x6, x7 = (np.ones(n, np.float32) for n in (5, 6, 7))  # numpy: making them compiles nothing
    with CompileCounter() as cc:
        f(x5).block_until_ready()
        first = cc.backend_compiles
        assert first == 1 and cc.backend_s > 0 and cc.trace_s > 0 and cc.lower_s > 0
        assert cc.seconds == pytest.approx(cc.trace_s + cc.lower_s + cc.backend_s)
        f(x5).block_until_ready()  # same shape: the cached executable
        assert cc.backend_compiles == first
        f(x6).block_until_ready()  # new shape: a new program
        assert cc.backend_compiles == first + 1
    total = cc.backend_compiles
    f(x7).block_until_ready()  # after exit: no longer counted
    assert cc.backend_compiles == total


def test_measure_splits_compile_from_wall_time():
    g = jax.jit(lambda x: jnp.cos(x) - 2.0)
    with CompileCounter() as cc:
        x = np.ones(3, np.float32)
        wall, comp, out = cc.measure(lambda: g(x).block_until_ready())
        assert 0 < comp <= wall and out.shape == (3,)
        wall2, comp2, _ = cc.measure(lambda: g(x).block_until_ready())
        assert comp2 == 0.0 and wall2 >= 0
    with pytest.raises(RuntimeError, match="open"):
        cc.measure(lambda: None)
