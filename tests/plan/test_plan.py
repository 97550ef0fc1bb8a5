"""``qwen2vl-jax plan`` end to end: the demo recipe's real train step compiled ahead of time for
a TPU v5e-4 with libtpu (no TPU), and the exit codes of what cannot be planned."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install 'jax[tpu]'): no TPU AOT")

from qwen2vl_jax.cli import main

pytestmark = pytest.mark.tpu_aot

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "experiments" / "configs" / "demo.yaml")
LAST = re.compile(r"^per-chip total: ([\d.]+) GiB of ([\d.]+) GiB HBM \((fits|does not fit)\)$")


def _gib(lines: list[str], label: str) -> float:
    row = next(line for line in lines if line.strip().startswith(label))
    return float(re.search(r"(-?[\d.]+) GiB", row).group(1))


def test_plan_demo_train_step_on_v5e(capsys):
    # Options before and after the overrides: both orders are the same plan.
    rc = main(["plan", DEMO, "--topology", "v5e:2x2", "steps=5", "--mesh", "fsdp=4"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    m = LAST.match(out[-1])
    assert m, out[-1]
    total, hbm, verdict = float(m.group(1)), float(m.group(2)), m.group(3)
    assert hbm == 16 and 0 < total < hbm and verdict == "fits"
    parts = sum(_gib(out, k) for k in ("arguments", "outputs", "temporaries", "aliased", "generated code"))
    assert abs(parts - _gib(out, "sum (upper bound)")) < 0.005
    # The verdict's figure is XLA's peak of live buffers, what XLA:TPU checks against the HBM.
    assert abs(total - _gib(out, "XLA peak of live buffers")) < 0.005 and total <= parts + 0.1
    assert "mesh: data=1,fsdp=4,tensor=1" in out
    # The ViT stream and the text rows are long enough for our Mosaic kernel (attention auto on TPU).
    kernels = next(line for line in out if line.startswith("kernels:"))
    assert int(kernels.split()[1]) > 0
    # 4 groups (one per chip) x 4 rows x 128 tokens, 1024 patches per group; nothing frozen.
    from qwen2vl_jax.perf.flops import train_flops
    from qwen2vl_jax.plan.train_plan import planning_model_config
    from qwen2vl_jax.train.run_config import load_run_config

    cfg, _ = planning_model_config(load_run_config(DEMO))
    want = train_flops(cfg, 16 * 128, 16 * 256, seq_len=128, vision_segment_len=256) / 4
    formula = next(line for line in out if line.strip().startswith("our formula (train_flops"))
    assert float(re.search(r": ([\d.e+]+) =", formula).group(1)) == pytest.approx(want, rel=1e-3)
    xla = next(line for line in out if line.strip().startswith("XLA cost analysis"))
    ratio = float(re.search(r"XLA / formula = ([\d.]+)", xla).group(1))
    assert 0.1 < ratio < 1.5


@pytest.mark.parametrize("argv,needle", [
    (["--topology", "v5e:3x3"], "does not split into hosts"),
    (["--topology", "v9:2x2"], "unknown TPU"),
    (["--topology", "v5p-100"], "no v5p slice"),
    (["--topology", "v5e:2x2", "--mesh", "tensor=3"], "but 4 are available"),
    # 4 query heads of the demo's decoder cannot be split 8 ways.
    (["--topology", "v5e:2x4", "--mesh", "tensor=8"], "cannot split"),
])
def test_plan_errors_exit_2_with_one_line(capsys, argv, needle):
    assert main(["plan", DEMO, *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("qwen2vl-jax plan: error:")]
    assert len(err) == 1 and needle in err[0], err


def test_serve_options_need_model(capsys):
    assert main(["plan", DEMO, "--topology", "v5e:2x2", "--mode", "decode"]) == 2
    assert "go with --model" in capsys.readouterr().err
