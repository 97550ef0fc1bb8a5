"""Plan a training recipe on a TPU slice: ahead-of-time compile its real train step.

The program is the loop's own: ``make_train_setup(run, cfg, mesh)`` over the slice's devices,
then ``setup.step_fn.lower(params, opt_state, batch).compile()`` on abstract arrays with the
loop's shardings (parameters and optimizer state by the rules table, the batch's packing groups
over the batch axes) and the loop's shapes (``[grad_accum, groups, rows, ...]`` at the recipe's
packing budgets). Nothing is allocated, and neither weights nor tokenizers are read: the
architecture is ``model.checkpoint``'s ``config.json`` when that directory exists here, else
``model.preset``'s, with ``model.overrides`` applied as training applies them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from qwen2vl_jax.config import ModelConfig, get_preset
from qwen2vl_jax.plan.report import PlanReport, compile_plan, mosaic_kernels, xla_flops_of
from qwen2vl_jax.plan.topology import Topology, check_shardings, topology_devices


def planning_model_config(run: Any) -> tuple[ModelConfig, str]:
    """(architecture, where it came from) of a recipe, without weights or a tokenizer."""
    from qwen2vl_jax.train.setup import replace_nested

    m = run.model
    path = Path(m.checkpoint) / "config.json" if m.checkpoint is not None else None
    if path is not None and path.exists():
        cfg, source = ModelConfig.from_json_file(path), f"{path}"
    elif m.preset is not None:
        cfg = get_preset(m.preset)
        source = f"preset {m.preset}" + (f" ({path} not here)" if path is not None else "")
    else:
        raise ValueError(f"model.checkpoint {m.checkpoint}: no config.json here and no model.preset to plan from")
    if m.overrides:
        cfg = replace_nested(cfg, m.overrides)
        source += " with model.overrides"
    return cfg, source


def _count(tree: Any) -> int:
    import jax

    return sum(int(x.size) for x in jax.tree.leaves(tree))


def step_flops(cfg: ModelConfig, run: Any, groups: int) -> tuple[float, float]:
    """Training FLOPs of one step at full budgets: (with attention, linear layers only). Every
    row is one causal sequence of ``text_budget`` tokens and its patches one image of
    ``patches_per_row`` patches: the most attention a packed step can hold."""
    from qwen2vl_jax.perf import flops as F

    rows = run.grad_accum * groups * run.per_device_batch_size
    tokens, patches = rows * run.data.text_budget, rows * run.data.patches_per_row
    full = F.train_flops(cfg, tokens, patches, seq_len=run.data.text_budget,
                         vision_segment_len=run.data.patches_per_row or None, freeze=run.freeze)
    mv, mm, ml = F.training_multipliers(freeze_vision=run.freeze.freeze_vision,
                                        freeze_merger=run.freeze.freeze_merger, freeze_llm=run.freeze.freeze_llm)
    linear = (mv * patches * F.vision_flops_per_patch(cfg)
              + mm * (patches // cfg.vision.spatial_merge_size**2) * F.merger_flops_per_token(cfg)
              + ml * tokens * (F.llm_linear_flops_per_token(cfg) + F.lm_head_flops_per_token(cfg)))
    return full, float(linear)


def plan_train(recipe: str, overrides: list[str], topology: Topology, mesh_spec: str | None = None) -> PlanReport:
    import jax

    from qwen2vl_jax.perf.devices import device_spec
    from qwen2vl_jax.sharding.mesh import describe, make_mesh
    from qwen2vl_jax.train.freezing import split_trainable
    from qwen2vl_jax.train.run_config import load_run_config
    from qwen2vl_jax.train.state import abstract_batch, make_train_setup

    run = load_run_config(recipe, list(overrides))
    cfg, source = planning_model_config(run)
    spec = mesh_spec if mesh_spec is not None else run.runtime.mesh
    check_shardings(cfg, run.runtime, spec, topology.chips)  # before libtpu: a clear error, fast
    devices = topology_devices(topology)
    chip = device_spec(devices[0].device_kind)
    mesh = make_mesh(spec, devices)
    setup = make_train_setup(run, cfg, mesh)
    params = setup.abstract_params
    trainable = split_trainable(params, run.freeze)[0]
    opt_state = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                             jax.eval_shape(setup.tx.init, trainable), setup.opt_shardings)
    batch = abstract_batch(cfg, run, setup.groups, setup.batch_sharding())

    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        lowered = setup.step_fn.lower(params, opt_state, batch)
    t1 = time.perf_counter()
    compiled, memory, oom, compile_s = compile_plan(lowered, (params, opt_state, batch))

    full, linear = step_flops(cfg, run, setup.groups)
    rt, d, rows = run.runtime, run.data, run.per_device_batch_size
    frozen = [k for k in ("vision", "merger", "llm") if getattr(run.freeze, f"freeze_{k}")]
    slots = run.grad_accum * setup.groups * rows * d.text_budget
    model = (f"{source}: {_count(params):,} parameters, {_count(trainable):,} trained "
             f"(frozen: {', '.join(frozen) or 'none'})")
    runtime = (f"compute {rt.dtype} over {rt.param_dtype} weights; remat vision={rt.vision_remat} "
               f"text={rt.text_remat}; attention vision={rt.vision_attention_impl} text={rt.text_attention_impl}")
    step = (f"{run.grad_accum} microbatch(es) x {setup.groups} groups x {rows} rows x {d.text_budget} tokens "
            f"(+ {rows * d.patches_per_row} patches per group) = {slots:,} token slots per step")
    details = [("model", model), ("runtime", runtime), ("step", step)]
    if compiled is not None:
        details.append(("kernels", f"{mosaic_kernels(compiled)} Pallas (Mosaic) kernel calls in the compiled program"))
    return PlanReport(
        what=f"train {recipe}" + (f" {' '.join(overrides)}" if overrides else ""),
        slice_name=topology.name, chips=mesh.devices.size, device_kind=devices[0].device_kind, chip=chip,
        mesh=describe(mesh), details=details, memory=memory,
        xla_flops=xla_flops_of(compiled) if compiled is not None else None,
        formula_flops=full / mesh.devices.size, formula_linear_flops=linear / mesh.devices.size,
        formula_what="train_flops at full budgets, each row one sequence and one image",
        lower_s=t1 - t0, compile_s=compile_s, oom=oom)


__all__ = ["plan_train", "planning_model_config", "step_flops"]
