"""Full-size presets built abstractly with jax.eval_shape: exact parameter counts (docs/flops.md)."""

import jax
import pytest
from flax import nnx

from qwen2vl_jax.config import get_preset
from qwen2vl_jax.model import abstract_model, count_params


@pytest.mark.parametrize("preset,total,vision", [
    ("2b", 2_208_985_600, 665_271_296),
    ("7b", 8_291_375_616, 675_759_104),
    ("72b", 73_405_560_320, 699_356_672),
])
def test_exact_parameter_counts(preset, total, vision):
    cfg = get_preset(preset)
    assert count_params(cfg) == total
    state = nnx.state(abstract_model(cfg), nnx.Param)
    assert sum(x.size for x in jax.tree.leaves(nnx.to_pure_dict(state)["visual"])) == vision


def test_every_param_has_logical_axes():
    state = nnx.state(abstract_model(get_preset("tiny")), nnx.Param)
    for path, var in nnx.to_flat_state(state):
        axes = var.get_metadata("out_sharding", None)
        assert axes is not None and len(axes) == len(var.shape), (path, axes, var.shape)
    flat = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}
    assert flat["decoder/layers/q_kernel"].get_metadata("out_sharding") == ("layers", "embed", "heads", "head_dim")
    assert flat["embed_tokens"].get_metadata("out_sharding") == ("vocab", "embed")
    assert flat["visual/blocks/qkv_kernel"].get_metadata("out_sharding")[0] == "vision_layers"
