"""Run in a subprocess with 8 fake CPU devices (tests/sharding/test_sharded_loading.py): load a
HF checkpoint onto a mesh and record, after every tensor placed, the bytes each device holds.
Usage: python load_worker.py CHECKPOINT_DIR MESH OUT.json"""

import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

from qwen2vl_jax import Qwen2VLForConditionalGeneration  # noqa: E402


def device_bytes(arrays=None) -> dict[str, int]:
    """Bytes each device holds of ``arrays`` (default: every live array of the process)."""
    held = {str(d): 0 for d in jax.devices()}
    for arr in jax.live_arrays() if arrays is None else arrays:
        for shard in arr.addressable_shards:
            held[str(shard.device)] += shard.data.nbytes
    return held


def main(path: str, mesh: str, out: str) -> None:
    before = device_bytes()
    trace = []
    model = Qwen2VLForConditionalGeneration.from_pretrained(
        path, dtype="float32", mesh=mesh,
        after_write=lambda: trace.append({d: b - before[d] for d, b in device_bytes().items()}))
    final = device_bytes(jax.tree.leaves(model.pure_params()))  # the model's own shards
    specs = {".".join(str(k.key) for k in p): str(x.sharding.spec)
             for p, x in jax.tree_util.tree_flatten_with_path(model.pure_params())[0]}
    json.dump({"trace": trace, "final": final, "specs": specs}, open(out, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
