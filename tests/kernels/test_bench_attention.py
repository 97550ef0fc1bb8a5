"""tools/bench_attention.py --blocks-only: the issue's block table, and target (a) <= 1/12."""

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
