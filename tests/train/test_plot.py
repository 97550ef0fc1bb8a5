"""plot_run: a PNG of loss and tokens/s from metrics.jsonl; clear errors without metrics."""

import math

import pytest

from qwen2vl_jax.train.metrics import MetricsLogger
from qwen2vl_jax.train.plot import plot_run


def test_plot_written(tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    with MetricsLogger(run, tensorboard=False) as log:
        for s in range(1, 41):
            log.log(s, {"loss": 5.0 * math.exp(-s / 10), "tokens_per_s": 1000.0 + s, "mfu": 0.3})
        log.log(41, {"loss": float("nan"), "tokens_per_s": 1000.0})  # NaN -> null -> a gap
        log.log(40, {"loss": 0.1, "eval_loss": 0.2})  # a re-logged step: the last record wins
    out = plot_run(run)
    assert out == run / "metrics.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # Explicit output path; the metrics file itself as input; a short run without throughput.
    with MetricsLogger(tmp_path / "short", tensorboard=False) as log:
        log.log(1, {"loss": 2.0})
    out2 = plot_run(tmp_path / "short" / "metrics.jsonl", tmp_path / "plots" / "short.png")
    assert out2.stat().st_size > 1000


def test_plot_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="no metrics records"):
        plot_run(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.jsonl").write_text('{"step": 1, "grad_norm": 1.0}\n')
    with pytest.raises(ValueError, match="neither"):
        plot_run(tmp_path / "other")
