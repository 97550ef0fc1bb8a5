"""Loading a HF checkpoint onto 8 fake devices: every tensor goes straight to its shards, so
no device ever holds more than its final shards plus one tensor, and the result is sharded by
the rules table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from qwen2vl_jax import Qwen2VLForConditionalGeneration, get_preset

WORKER = Path(__file__).with_name("load_worker.py")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    Qwen2VLForConditionalGeneration(get_preset("tiny"), seed=3).save_pretrained(path)
    return path


def _load(checkpoint, mesh, tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "trace.json"
    proc = subprocess.run([sys.executable, str(WORKER), str(checkpoint), mesh, str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_no_device_holds_more_than_its_shards_plus_one_tensor(checkpoint, tmp_path):
    with safe_open(checkpoint / "model.safetensors", "np") as f:
        largest = max(f.get_slice(k).get_shape() and int(np.prod(f.get_slice(k).get_shape())) * 4 for k in f.keys())
    result = _load(checkpoint, "fsdp=4,tensor=2", tmp_path)
    final, trace = result["final"], result["trace"]
    total = sum(final.values())
    assert len(trace) > 30  # one entry per tensor placed
    for step in trace:
        for device, held in step.items():
            assert held <= final[device] + largest, (device, held, final[device], largest)
    # Sharded, not replicated: each device holds about 1/8 of the model (small leaves replicate).
    assert max(final.values()) < total / 8 * 1.6
    assert result["specs"]["decoder.layers.q_kernel"] == "P(None, 'fsdp', 'tensor', None)"
    assert result["specs"]["embed_tokens"] == "P('tensor', 'fsdp')"


def test_convert_onto_a_mesh_round_trips(checkpoint, tmp_path):
    from qwen2vl_jax.checkpoint.convert import hf_to_orbax

    out = hf_to_orbax(checkpoint, tmp_path / "orbax", "float32", progress=lambda _: None, mesh="fsdp=1")
    a = Qwen2VLForConditionalGeneration.from_pretrained(checkpoint).pure_params()
    b = Qwen2VLForConditionalGeneration.from_pretrained(out).pure_params()
    import jax

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
