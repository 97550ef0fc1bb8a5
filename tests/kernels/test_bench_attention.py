"""tools/bench_attention.py --blocks-only: the block table, and shape (a) visiting <= 1/12 of the
blocks; its timer (the shared qwen2vl_jax.perf.timing helpers)."""

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "bench_attention.py"


def _tool():
    spec = importlib.util.spec_from_file_location("bench_attention", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_block_table_meets_the_target_for_shape_a(capsys):
    bench = _tool()
    assert sum(bench.MIXED_SIZES) == 16384
    assert all(sum(lens) == 8192 for lens in bench.SHAPES[2].segment_lengths)
    a = bench.block_row(bench.SHAPES[0], 128)
    assert a["visited"] * 12 <= a["dense"] and a["visited"] == a["dense"] // 16
    for shape in bench.SHAPES:  # never fewer blocks than the kept pairs need
        r = bench.block_row(shape, 128)
        assert r["ideal"] <= r["fraction"] < 1
    bench.main(["--blocks-only"])
    assert "(a) ViT 16 x 1024" in capsys.readouterr().out


def test_timer_returns_the_median_of_calls_after_a_warm_up():
    import jax.numpy as jnp

    bench = _tool()
    calls = []

    def fn(x):
        calls.append(1)
        return jnp.asarray(x) + 1

    t = bench._time(fn, 1.0, iters=3)
    assert len(calls) == 4 and t >= 0  # one warm-up call, then the timed ones
