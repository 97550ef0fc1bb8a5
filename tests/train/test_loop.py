"""The training loop end to end, in subprocesses (as a user runs it): exact resume after SIGKILL,
SIGTERM saves a restorable checkpoint, and train -> eval -> plot through the CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qwen2vl_jax.cli import main
from qwen2vl_jax.train.metrics import read_metrics

RECIPE = "experiments/configs/demo.yaml"
SMALL = ["per_device_batch_size=2", "data.patches_per_row=192", "log_every=1", "checkpoint_every=2",
         "eval.num_examples=8", "eval.batch_size=8", "tensorboard=false"]


def _cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qwen2vl_jax", "train", RECIPE, f"output_dir={out}", *SMALL, *extra]


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu"}


def _lines(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return read_metrics(path) if path.exists() else []


def _wait_for(proc, cond, timeout=240):
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stdout.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def _finalized(run_dir: Path) -> list[int]:
    ckpt = run_dir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def test_sigkill_then_restart_gives_bitwise_identical_losses_and_batches(tmp_path):
    ref = subprocess.run(_cmd(tmp_path / "ref", "steps=7"), env=_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-3000:]
    want = _lines(tmp_path / "ref" / "demo")
    assert [x["step"] for x in want] == list(range(1, 8))

    run_dir = tmp_path / "killed" / "demo"
    proc = subprocess.Popen(_cmd(tmp_path / "killed", "steps=7"), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for(proc, lambda: 2 in _finalized(run_dir) and len(_lines(run_dir)) >= 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(_lines(run_dir))
    assert killed_at < 7, "the run finished before it could be killed"

    again = subprocess.run(_cmd(tmp_path / "killed", "steps=7"), env=_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stdout
    got = _lines(run_dir)
    assert [x["step"] for x in got] == list(range(1, 8))  # the killed attempt's extra lines are gone
    for w, g in zip(want, got):
        assert g["loss"] == w["loss"] and g["grad_norm"] == w["grad_norm"], (w["step"], w, g)  # bitwise
        assert g["batch_crc"] == w["batch_crc"]  # the same batches


def test_sigterm_saves_a_checkpoint_and_exits_cleanly_then_resumes(tmp_path):
    run_dir = tmp_path / "demo"
    proc = subprocess.Popen(_cmd(tmp_path, "steps=500"), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for(proc, lambda: len(_lines(run_dir)) >= 2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGTERM" in out and "preempted" in out
    saved = _finalized(run_dir)[-1]
    assert saved == _lines(run_dir)[-1]["step"]  # saved at the step where it stopped
    again = subprocess.run(_cmd(tmp_path, f"steps={saved + 1}"), env=_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"from the checkpoint of step {saved}" in again.stdout
    assert _lines(run_dir)[-1]["step"] == saved + 1


def test_cli_train_eval_plot(tmp_path, capsys):
    args = [f"output_dir={tmp_path}", *SMALL, "steps=3"]
    assert main(["train", RECIPE, *args]) == 0
    run_dir = tmp_path / "demo"
    assert (run_dir / "config.yaml").exists() and (run_dir / "model" / "config.json").exists()
    line = _lines(run_dir)[-1]
    for key in ("step", "loss", "grad_norm", "learning_rate", "tokens_per_s", "text_padding_fraction",
                "patch_padding_fraction", "skipped_records"):
        assert key in line, key
    capsys.readouterr()
    assert main(["eval", RECIPE, *args, "--json", "--show", "2"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["num_examples"] == 8 and res["loss"] > 0 and 0 <= res["exact_match"] <= 1
    # The exported model directory evaluates to the same loss.
    assert main(["eval", RECIPE, *args, "--json", "--model", str(run_dir / "model")]) == 0
    res2 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res2["loss"] == pytest.approx(res["loss"], rel=1e-5)
    assert main(["plot", str(run_dir)]) == 0
    assert (run_dir / "metrics.png").stat().st_size > 1000
    # Errors name the problem and exit 2.
    assert main(["train", RECIPE, "stepz=3"]) == 2
    assert "stepz" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nothing")]) == 2


def test_data_parallel_on_two_devices_then_resume_on_one(tmp_path):
    """Two (fake CPU) devices, one packed group each; the checkpoint restores onto a 1-device mesh."""
    two = {**_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    first = subprocess.run(_cmd(tmp_path, "steps=2"), env=two, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 cpu device(s) on mesh data=1,fsdp=2,tensor=1, batch 1 x 2 x 2 rows" in first.stdout
    second = subprocess.run(_cmd(tmp_path, "steps=3"), env=_env(), capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "from the checkpoint of step 2" in second.stdout and "1 cpu device(s)" in second.stdout
    # Another device count packs another data stream: said, and started afresh (not refused).
    assert "num_groups=2 packing groups per step, this run has 1" in second.stdout
    assert "starting the data stream afresh" in second.stdout
    losses = [x["loss"] for x in _lines(tmp_path / "demo")]
    assert len(losses) == 3 and all(0 < x < 20 for x in losses)
