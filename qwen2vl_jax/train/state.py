"""Everything a training step needs, placed on the mesh: parameter and optimizer-state
shardings, the jitted step, the batch sharding, and sharded initial state.

The same ``TrainSetup`` serves the training loop (with real arrays) and ``qwen2vl-jax plan``
(ahead-of-time compilation for a TPU topology from abstract arrays), so the planned program
is the one that runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from qwen2vl_jax.config import ModelConfig
from qwen2vl_jax.model import abstract_model, init_params
from qwen2vl_jax.sharding.params import optimizer_shardings, param_shardings
from qwen2vl_jax.sharding.rules import mesh_axes_of
from qwen2vl_jax.train.freezing import split_trainable
from qwen2vl_jax.train.optimizer import learning_rate_schedule, make_optimizer
from qwen2vl_jax.train.step import make_train_step


@dataclasses.dataclass
class TrainSetup:
    cfg: ModelConfig
    mesh: Mesh
    graphdef: nnx.GraphDef
    abstract_params: dict  # ShapeDtypeStruct leaves with their shardings
    param_shardings: dict
    tx: optax.GradientTransformation
    opt_shardings: Any
    step_fn: Any  # jit(params, opt_state, batch) -> (params, opt_state, metrics)
    groups: int  # packing groups per step (one vision stream each): the global batch is groups x rows
    freeze: Any  # the run's FreezeConfig

    def batch_sharding(self) -> NamedSharding:
        """Of every [A, G, ...] batch leaf: the groups split over the mesh's batch axes."""
        axes = mesh_axes_of("groups", self.mesh, self.groups) or None
        return NamedSharding(self.mesh, PartitionSpec(None, axes))

    def init_opt_state(self, params: dict) -> Any:
        """The optimizer state of the trainable params, sharded like them."""
        trainable = split_trainable(params, self.freeze)[0]
        with jax.set_mesh(self.mesh):
            return jax.jit(self.tx.init, out_shardings=self.opt_shardings)(trainable)


def make_train_setup(run: Any, cfg: ModelConfig, mesh: Mesh, groups: int | None = None) -> TrainSetup:
    """The step and shardings of ``run`` on ``mesh``; ``groups`` defaults to one packing group
    per device (``per_device_batch_size`` rows each), whatever the mesh's shape."""
    from qwen2vl_jax.train.loop import optimizer_config

    state = nnx.state(abstract_model(cfg, run.runtime), nnx.Param)
    graphdef = nnx.graphdef(abstract_model(cfg, run.runtime))
    shardings = param_shardings(state, mesh)
    abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                            nnx.to_pure_dict(state), shardings)
    trainable, _ = split_trainable(abstract, run.freeze)
    opt_cfg = optimizer_config(run)
    tx = make_optimizer(opt_cfg, trainable)
    opt_shardings = optimizer_shardings(tx, trainable, split_trainable(shardings, run.freeze)[0], mesh)
    step = make_train_step(graphdef, tx, run.freeze, z_loss_weight=run.z_loss_weight,
                           schedule=learning_rate_schedule(opt_cfg), shardings=(shardings, opt_shardings))
    return TrainSetup(cfg=cfg, mesh=mesh, graphdef=graphdef, abstract_params=abstract, param_shardings=shardings,
                      tx=tx, opt_shardings=opt_shardings, step_fn=step, groups=groups or mesh.devices.size,
                      freeze=run.freeze)


def initial_params(run: Any, setup: TrainSetup) -> dict:
    """The first params, each on its shards: the checkpoint's (``model.checkpoint``, loaded
    tensor by tensor onto the mesh) or a sharded random init from ``run.seed``."""
    if run.model.checkpoint is not None:
        from qwen2vl_jax.hf import Qwen2VLForConditionalGeneration

        model = Qwen2VLForConditionalGeneration.from_pretrained(run.model.checkpoint, dtype=run.runtime.param_dtype,
                                                                mesh=setup.mesh)
        return model.pure_params()
    with jax.set_mesh(setup.mesh):
        return init_params(setup.cfg, run.runtime, run.seed, setup.param_shardings)


def abstract_batch(cfg: ModelConfig, run: Any, groups: int, sharding: NamedSharding | None = None) -> dict:
    """ShapeDtypeStructs of one step's batch ([A, G, rows, ...], as ``PackedBatches`` yields)."""
    from qwen2vl_jax.layout.packing import packed_batch_shapes

    shapes = packed_batch_shapes(cfg, run.per_device_batch_size, run.data.text_budget,
                                 run.per_device_batch_size * run.data.patches_per_row, run.runtime.dtype)
    lead = (run.grad_accum, groups)
    return {k: jax.ShapeDtypeStruct(lead + shape, np.dtype(dt), sharding=sharding) for k, (shape, dt) in shapes.items()}


__all__ = ["TrainSetup", "abstract_batch", "initial_params", "make_train_setup"]
