"""Ahead-of-time compilation of the TPU kernels for real TPU topologies with libtpu (no TPU
needed): Mosaic lowering errors that interpret mode cannot see fail here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install 'jax[tpu]'): no TPU AOT")

from jax.experimental import topologies
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from qwen2vl_jax.ops.attention import attention

pytestmark = pytest.mark.tpu_aot

# ViT-like shape: head_dim 80 (padded to 128 inside), GQA 2:1, a stream long enough for 8 blocks.
B, S, HQ, HKV, D = 4, 1024, 4, 2, 80


def _mesh(topology: str) -> Mesh:
    devices = np.array(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
    return Mesh(devices.reshape(-1, 2), ("data", "tensor"), axis_types=(AxisType.Auto,) * 2)


def _compile(mesh: Mesh, impl: str, causal: bool, dtype):
    """Lower + compile forward and gradient through the public dispatch under the TPU mesh: the
    platform (hence no interpret mode) and shard_map come from the mesh in context."""
    act, ids = NamedSharding(mesh, P("data", None, "tensor", None)), NamedSharding(mesh, P("data", None))
    args = (jax.ShapeDtypeStruct((B, S, HQ, D), dtype, sharding=act),
            jax.ShapeDtypeStruct((B, S, HKV, D), dtype, sharding=act),
            jax.ShapeDtypeStruct((B, S, HKV, D), dtype, sharding=act),
            jax.ShapeDtypeStruct((B, S), jnp.int32, sharding=ids))

    def fwd(q, k, v, seg):
        return attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=causal, impl=impl)

    def grad(q, k, v, seg):
        return jax.grad(lambda *a: fwd(*a, seg).astype(jnp.float32).sum(), argnums=(0, 1, 2))(q, k, v)

    import flax.linen as nn

    with jax.set_mesh(mesh), nn.logical_axis_rules([("batch", "data"), ("heads", "tensor")]):
        compiled = [jax.jit(f).trace(*args).lower(lowering_platforms=("tpu",)).compile() for f in (fwd, grad)]
    return [c.as_text() for c in compiled]


@pytest.mark.parametrize("topology,causal,dtype", [("v5e:2x2", False, jnp.bfloat16),
                                                    ("v5p:2x2x1", True, jnp.bfloat16),
                                                    ("v4:2x2x1", True, jnp.float32)])
def test_block_sparse_compiles_for_tpu(topology, causal, dtype):
    for hlo in _compile(_mesh(topology), "block_sparse", causal, dtype):
        assert "tpu_custom_call" in hlo  # a real Mosaic kernel, not interpret mode


@pytest.mark.parametrize("causal", [False, True])
def test_splash_compiles_for_tpu(causal):
    for hlo in _compile(_mesh("v5e:2x2"), "splash", causal, jnp.bfloat16):
        assert "tpu_custom_call" in hlo
