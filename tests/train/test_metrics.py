"""MetricsLogger: metrics.jsonl, resume truncation, TensorBoard, W&B (faked), progress bar."""

import io
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from qwen2vl_jax.train.metrics import MetricsLogger, ProgressBar, read_metrics, truncate_metrics


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_jsonl_lines_flushed_and_scalars_converted(tmp_path):
    import jax.numpy as jnp

    log = MetricsLogger(tmp_path / "run", tensorboard=False)
    log.log(1, {"loss": jnp.float32(2.5), "tokens": np.int32(7), "lr": 1e-3, "phase": "warmup"})
    # Readable before close: every line is flushed.
    lines = _lines(tmp_path / "run" / "metrics.jsonl")
    assert lines[0]["step"] == 1 and lines[0]["loss"] == 2.5 and lines[0]["tokens"] == 7
    assert isinstance(lines[0]["tokens"], int) and lines[0]["phase"] == "warmup" and "time" in lines[0]
    log.log(2, {"loss": float("nan"), "grad_norm": np.float64(np.inf)})  # strict JSON: null
    log.close()
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert _lines(tmp_path / "run" / "metrics.jsonl")[1]["loss"] is None
    with pytest.raises(TypeError, match="scalar"):
        MetricsLogger(tmp_path / "x", tensorboard=False).log(1, {"v": np.zeros(3)})


def test_resume_truncates_later_steps(tmp_path):
    run = tmp_path / "run"
    with MetricsLogger(run, tensorboard=False) as log:
        for s in range(1, 8):
            log.log(s, {"loss": 10.0 - s})
    # The killed attempt also left a half-written line.
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "lo')
    with MetricsLogger(run, tensorboard=False, resume_step=4) as log:
        assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]
        log.log(5, {"loss": 0.5})
    recs = read_metrics(run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5] and recs[-1]["loss"] == 0.5
    # No resume_step: appends, but a cut last line is repaired first (no corrupt concatenation).
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')
    with MetricsLogger(run, tensorboard=False) as log:
        log.log(6, {"loss": 0.25})
    assert [r["step"] for r in _lines(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    # A fresh start into an old run directory: resume_step=0 drops everything.
    assert truncate_metrics(run / "metrics.jsonl", 0) == 0
    assert (run / "metrics.jsonl").read_text() == ""


def test_tensorboard_event_file(tmp_path):
    pytest.importorskip("tensorboardX")
    run = tmp_path / "run"
    with MetricsLogger(run, tensorboard=True, config={"lr": 1e-3}) as log:
        log.log(1, {"loss": 3.0, "tokens_per_s": 100.0, "phase": "x"})
        log.log(2, {"loss": 2.0})
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_tensorboard_scalars_readable(tmp_path):
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto import event_pb2

    run = tmp_path / "run"
    with MetricsLogger(run, tensorboard=True) as log:
        log.log(3, {"loss": 1.5})
    (event_file,) = (run / "tensorboard").glob("events.out.tfevents.*")
    data, scalars = event_file.read_bytes(), []
    pos = 0
    while pos < len(data):  # TFRecord framing: u64 length, u32 crc, payload, u32 crc
        n = int.from_bytes(data[pos:pos + 8], "little")
        ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
        pos += 12 + n + 4
        scalars += [(ev.step, v.tag, v.simple_value) for v in ev.summary.value]
    assert (3, "loss", 1.5) in scalars
    # A resumed run asks TensorBoard to purge the killed attempt's events from step k+1 on.
    with MetricsLogger(run, tensorboard=True, resume_step=2) as log:
        log.log(3, {"loss": 1.25})
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_optional_backends_lazy(tmp_path, monkeypatch):
    # None in sys.modules makes "import X" raise ImportError: proves they are not imported.
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with MetricsLogger(tmp_path / "a", wandb=None) as log:  # tensorboard="auto": quietly off
        log.log(1, {"loss": 1.0})
    assert not (tmp_path / "a" / "tensorboard").exists()
    with pytest.raises(ImportError, match=r"\[track\]"):
        MetricsLogger(tmp_path / "b", tensorboard=False, wandb={"project": "p"})
    with pytest.raises(ImportError, match="tensorboardX"):
        MetricsLogger(tmp_path / "c", tensorboard=True)


def test_wandb_enabled_with_fake_module(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, data, step=None):
            calls.append(("log", step, data))

        def finish(self):
            calls.append(("finish",))

    def init(**kw):
        calls.append(("init", kw))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    run = tmp_path / "run"
    with MetricsLogger(run, tensorboard=False, wandb={"project": "p"}, config={"steps": 3}) as log:
        log.log(1, {"loss": 2.0})
    init_kw = calls[0][1]
    assert init_kw["project"] == "p" and init_kw["config"] == {"steps": 3} and init_kw["resume"] == "allow"
    assert calls[1] == ("log", 1, {"loss": 2.0}) and calls[-1] == ("finish",)
    # The resumed run continues the same W&B run.
    with MetricsLogger(run, tensorboard=False, wandb=True, resume_step=1):
        pass
    assert [c[1]["id"] for c in calls if c[0] == "init"] == [init_kw["id"]] * 2


def test_progress_bar_only_on_terminal(tmp_path):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    with MetricsLogger(tmp_path / "a", tensorboard=False, progress_total_steps=10, stream=tty) as log:
        log.log(5, {"loss": 1.2345, "tokens_per_s": 12345.0, "mfu": 0.312})
        log.write("a message")
    out = tty.getvalue()
    assert "\r" in out and "step 5/10" in out and "loss 1.2345" in out and "12.3k tok/s" in out
    assert "MFU 31.2%" in out and "a message\n" in out
    pipe = io.StringIO()  # not a terminal: nothing drawn
    with MetricsLogger(tmp_path / "b", tensorboard=False, progress_total_steps=10, stream=pipe) as log:
        log.log(5, {"loss": 1.0})
    assert pipe.getvalue() == ""
    bar = ProgressBar(100, start_step=50, stream=io.StringIO(), force=True)
    bar.update(75, {"loss": 0.5})
    assert "step 75/100" in bar.render() and "<" in bar.render()  # ETA once steps are done


def test_inactive_logger_writes_nothing(tmp_path):
    log = MetricsLogger(tmp_path / "run", active=False)
    assert log.log(1, {"loss": 1.0}) == {}
    log.close()
    assert not (tmp_path / "run").exists()


def test_modules_import_without_optional_packages():
    code = (
        "import sys\n"
        "for m in ('wandb', 'tensorboardX', 'matplotlib'): sys.modules[m] = None\n"
        "import qwen2vl_jax.perf.flops, qwen2vl_jax.perf.devices, qwen2vl_jax.train.metrics\n"
        "import qwen2vl_jax.train.plot\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_metrics_module_reexports_the_split_modules():
    from qwen2vl_jax.train import metrics, metrics_jsonl, progress, throughput

    assert metrics.read_metrics is metrics_jsonl.read_metrics and metrics.METRICS_FILE == "metrics.jsonl"
    assert metrics.truncate_metrics is metrics_jsonl.truncate_metrics
    assert metrics.ProgressBar is progress.ProgressBar and metrics.Throughput is throughput.Throughput


def test_make_record_skips_reserved_keys_and_nan(tmp_path):
    from qwen2vl_jax.train.metrics_jsonl import make_record

    rec = make_record(3, {"step": 99, "time": 0, "loss": float("nan"), "lr": np.float32(0.5)})
    assert rec["step"] == 3 and rec["time"] > 1e9 and rec["loss"] is None and rec["lr"] == 0.5
    assert list(rec) == ["step", "time", "loss", "lr"]
