"""Several processes on JAX's own runtime, on loopback: 2 processes x 4 fake CPU devices train
exactly as 1 process x 8 devices (same global batches, same losses), save and restore across
process counts bitwise, and a SIGTERM to either process stops both at the same step, saved."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from qwen2vl_jax.train.metrics import read_metrics

RECIPE = "experiments/configs/demo.yaml"
SMALL = ["per_device_batch_size=1", "data.patches_per_row=192", "log_every=1", "tensorboard=false",
         "data.num_workers=1", "mesh=data=2,fsdp=4", "eval.num_examples=4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _train(out: Path, *extra: str, processes: int = 1) -> list[subprocess.Popen]:
    base = [sys.executable, "-m", "qwen2vl_jax", "train", RECIPE, f"output_dir={out}", *SMALL, *extra]
    if processes == 1:
        return [subprocess.Popen(base, env=_env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    port = _free_port()  # the coordinator binds to 127.0.0.1 only
    return [subprocess.Popen(base + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                                     "--process-id", str(i)], env=_env(8 // processes), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for i in range(processes)]


def _finish(procs, timeout=600) -> list[str]:
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outs.append(out)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


def test_two_processes_train_exactly_like_one_and_resume_across_process_counts(tmp_path):
    _finish(_train(tmp_path / "one", "steps=5"))
    want = [r["loss"] for r in read_metrics(tmp_path / "one" / "demo")]
    _finish(_train(tmp_path / "two", "steps=3", processes=2))
    exported = load_file(str(tmp_path / "two" / "demo" / "model" / "model.safetensors"))  # the params at step 3
    outs = _finish(_train(tmp_path / "two", "steps=5", processes=2))
    assert "resuming" in outs[0] and "step 3" in outs[0]
    got = [r["loss"] for r in read_metrics(tmp_path / "two" / "demo")]
    assert len(got) == len(want) == 5
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # (the same global batches: tests/data_pipelines checks the group content per process count)

    # The 2-process checkpoint of step 3, restored in ONE process: bitwise the params it saved.
    from flax import nnx

    from qwen2vl_jax.checkpoint.safetensors_io import iter_hf_tensors
    from qwen2vl_jax.config import ModelConfig, RuntimeConfig
    from qwen2vl_jax.model import abstract_model
    from qwen2vl_jax.train.checkpointing import TrainCheckpointer
    from qwen2vl_jax.train.freezing import FreezeConfig, split_trainable
    from qwen2vl_jax.train.optimizer import OptimizerConfig, make_optimizer
    import jax

    cfg = ModelConfig.from_json_file(tmp_path / "two" / "demo" / "model" / "config.json")
    params_like = nnx.to_pure_dict(nnx.state(abstract_model(cfg, RuntimeConfig()), nnx.Param))
    params_like = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), params_like)
    trainable = split_trainable(params_like, FreezeConfig())[0]
    opt_like = make_optimizer(OptimizerConfig(), trainable).init(trainable)
    with TrainCheckpointer(tmp_path / "two" / "demo" / "checkpoints", say=lambda _: None) as ckpt:
        step, params, *_ = ckpt.restore(params_like, opt_like, step=3)
    assert step == 3
    for name, tensor in iter_hf_tensors(cfg, jax.tree.map(np.asarray, params)):
        np.testing.assert_array_equal(tensor, exported[name], err_msg=name)


@pytest.mark.parametrize("victim", [0, 1])
def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(tmp_path, victim):
    run_dir = tmp_path / "demo"
    procs = _train(tmp_path, "steps=200", "checkpoint_every=1000", processes=2)
    t0 = time.time()
    while len(read_metrics(run_dir)) < 2 if (run_dir / "metrics.jsonl").exists() else True:
        assert all(p.poll() is None for p in procs), [p.stdout.read()[-2000:] for p in procs]
        assert time.time() - t0 < 400, "training did not start"
        time.sleep(0.2)
    procs[victim].send_signal(signal.SIGTERM)
    outs = _finish(procs, timeout=300)  # both exit 0, in bounded time
    assert "saving a checkpoint at step" in outs[0]
    stopped = int(outs[0].split("saving a checkpoint at step ")[1].split()[0])
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [stopped] and (run_dir / "checkpoints" / str(stopped) / "qwen2vl_manifest.json").exists()
    assert read_metrics(run_dir)[-1]["step"] == stopped
    assert json.loads((run_dir / ".lock").read_text() if (run_dir / ".lock").exists() else "{}") == {}
