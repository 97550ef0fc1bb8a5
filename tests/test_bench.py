"""The inference benchmark (qwen2vl_jax/bench/, tools/bench_inference.py) runs end to end."""

import importlib.util
import math
import os
import subprocess
import sys

import pytest

from qwen2vl_jax.bench import main
from qwen2vl_jax.bench.report import Row, format_table

HAVE_HF = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("transformers") is not None


def _table(out: str) -> dict[tuple[str, int], list[str]]:
    """{(metric, batch): [ours, theirs, ratio]} from the printed table."""
    rows = {}
    for line in out.splitlines():
        if "] " in line and not line.startswith("#"):
            metric, rest = line.split("] ", 1)
            cells = rest.split()
            rows[metric.strip() + "]", int(cells[0])] = cells[1:]
    return rows


@pytest.mark.parity
@pytest.mark.skipif(not HAVE_HF, reason="needs torch and transformers (the [parity] extra)")
def test_cpu_comparison_prints_the_table(capsys):
    assert main(["--config", "tiny", "--runs", "1", "--new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    for b in (1, 8):
        for metric in ("prefill: forward, full logits [ms]", "prefill: generate(max_new_tokens=1) [ms]",
                       "generate(max_new_tokens=2), total [ms]"):
            ours, theirs, ratio = rows[metric, b]
            assert float(ours) > 0 and float(theirs) > 0 and float(ratio.rstrip("x")) > 0, (metric, b)
        # Decode tok/s is a difference of two timings: positive, or nan when noise hides it.
        ours, theirs, _ = rows["decode throughput [tok/s]", b]
        for x in (float(ours), float(theirs)):
            assert x > 0 or math.isnan(x)
    assert "166,272 parameters" in out
    assert "greedy continuations identical in 8/8 rows" in out
    assert "backend compilations during the timed runs: 0" in out


def test_gpu_mode_runs_on_cpu(capsys, tmp_path):
    out_json = tmp_path / "r.json"
    assert main(["--gpu", "--allow-cpu", "--preset", "tiny", "--hbm-gbps", "20", "--runs", "1",
                 "--new-tokens", "4", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    rows = _table(out)
    assert float(rows["prefill: generate(max_new_tokens=1) [ms]", 1][0]) > 0
    assert float(rows["HBM roofline [tok/s]", 1][0]) > 0
    assert "fraction of the HBM roofline:" in out
    assert "backend compilations during the timed runs: 0" in out
    assert out_json.exists()


def test_gpu_mode_refuses_cpu_and_unknown_bandwidth(capsys):
    assert main(["--gpu", "--preset", "tiny"]) == 2
    assert "--allow-cpu" in capsys.readouterr().err
    assert main(["--gpu", "--allow-cpu", "--preset", "tiny"]) == 2
    assert "--hbm-gbps" in capsys.readouterr().err
    assert main(["--gpu", "--allow-cpu", "--preset", "tiny", "--hbm-gbps", "0"]) == 2
    assert "positive" in capsys.readouterr().err


def test_ratio_is_our_speedup():
    assert Row("x", 1, 2.0, 6.0, "ms").ratio == 3.0 and Row("x", 1, 30.0, 10.0, "tok/s").ratio == 3.0
    assert Row("x", 1, 2.0, None, "ms").ratio is None
    table = format_table([Row("m", 8, 2.0, 6.0, "ms"), Row("d", 8, 1.0, None, "tok/s")])
    assert "m [ms]" in table and "3.00x" in table and table.splitlines()[-1].split()[-2:] == ["-", "-"]


def test_importing_the_package_and_cli_loads_no_torch():
    code = ("import sys\n"
            "import qwen2vl_jax, qwen2vl_jax.bench, qwen2vl_jax.cli\n"
            "qwen2vl_jax.cli.build_parser()\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"
