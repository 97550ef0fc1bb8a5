"""The same program on 1 device and on 8 fake CPU devices under five meshes: forward logits,
loss, gradients, 3 training steps and greedy generation agree (fp32), and FSDP/tensor meshes
really shard the parameters."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MESHES = ["data=8", "fsdp=8", "data=2,fsdp=2,tensor=2", "fsdp=4,tensor=2", "fsdp=2,tensor=4"]
WORKER = Path(__file__).with_name("mesh_worker.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("meshes")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(WORKER), str(out), "single", *MESHES], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {spec: dict(np.load(out / f"{spec}.npz")) for spec in ["single", *MESHES]}


@pytest.mark.parametrize("mesh", MESHES)
def test_mesh_equals_single_device(results, mesh):
    base, got = results["single"], results[mesh]
    assert np.abs(got["logits"] - base["logits"]).max() <= 1e-5
    assert np.array_equal(got["tokens"], base["tokens"])  # greedy generation token-identical
    assert np.abs(got["train_losses"] - base["train_losses"]).max() <= 1e-5
    assert abs(float(got["loss_sum"] - base["loss_sum"])) <= 1e-5 * abs(float(base["loss_sum"]))
    grads = [k for k in base if k.startswith("grad/")]
    assert len(grads) > 20
    for k in grads:
        assert np.abs(got[k] - base[k]).max() <= 1e-5, k
    assert bool(got["moments_sharded_like_params"])


def test_kv_cache_is_sharded_over_batch_and_kv_heads(results):
    assert str(results["fsdp=8"]["cache_spec"]) == "P(None, 'fsdp')"
    assert str(results["fsdp=4,tensor=2"]["cache_spec"]) == "P(None, 'fsdp', None, 'tensor')"
    assert str(results["data=2,fsdp=2,tensor=2"]["cache_spec"]) == "P(None, ('data', 'fsdp'), None, 'tensor')"
    # tensor=4 > 2 kv heads: each kv head is repeated twice, one per tensor shard.
    assert int(results["fsdp=2,tensor=4"]["cache_kv_heads"]) == 4
    assert str(results["fsdp=2,tensor=4"]["cache_spec"]) == "P(None, 'fsdp', None, 'tensor')"
    assert int(results["single"]["cache_kv_heads"]) == 2


def test_fsdp_and_tensor_meshes_shard_the_parameters(results):
    whole = int(results["single"]["param_shard_bytes"])
    assert int(results["data=8"]["param_shard_bytes"]) == whole  # pure data parallel: replicated
    assert int(results["fsdp=8"]["param_shard_bytes"]) < whole / 6  # ~1/8, small leaves replicated
    assert int(results["fsdp=4,tensor=2"]["param_shard_bytes"]) < whole / 3
