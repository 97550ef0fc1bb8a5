"""Plan inference on a TPU slice: ahead-of-time compile generation's prefill or decode step.

* ``prefill``: ``generation.decode.make_prefill(graphdef, cache_len, do_sample=False)`` on a
  bucketed batch of B x S text tokens (plus P vision patches with ``patches``), writing a fresh
  KV cache of ``cache_len = S + max_new_tokens`` slots (rounded up as ``model.generate`` does);
* ``decode``: ``make_decode(graphdef, chunk=1, do_sample=False)``, one token for every row, on
  the decode state at cache length S (its abstract shape is ``jax.eval_shape`` of the prefill of
  an S - max_new_tokens prompt), the state donated as ``generate`` donates it.

Weights are the preset's architecture in ``dtype`` (bf16 serving: no fp32 master copy), sharded
by the rules table over the mesh (default: every chip on ``fsdp``; ``tensor=N`` splits heads,
MLP units and the vocabulary instead). Inputs are split over the batch axes where the batch
divides them; the decode state is sharded as the prefill leaves it (the KV cache by batch and
kv heads, per-row arrays by batch).
"""

from __future__ import annotations

import time
from typing import Any

from qwen2vl_jax.plan.report import PlanReport, compile_plan, mosaic_kernels, xla_flops_of
from qwen2vl_jax.plan.topology import Topology, check_shardings, topology_devices

MODES = ("prefill", "decode")


def _sharded(tree: Any, mesh: Any, axes_of) -> Any:
    """ShapeDtypeStructs of ``tree``'s leaves, each with ``NamedSharding(mesh, axes_of(leaf))``."""
    import jax
    from jax.sharding import NamedSharding

    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, axes_of(x))),
                        tree)


def serve_flops(cfg: Any, mode: str, batch: int, seq: int, patches: int) -> float:
    """Forward FLOPs of one prefill (every row a causal S-token sequence, logits of the last
    position only, the patches one image) or of one decode step (B tokens attending to S slots)."""
    from qwen2vl_jax.perf import flops as F

    if mode == "decode":
        return float(batch * F.llm_flops_per_token(cfg, context_len=seq))
    fwd = F.forward_flops(cfg, batch * seq, patches, seq_len=seq, vision_segment_len=patches or None)
    return float(fwd.total - (batch * seq - batch) * F.lm_head_flops_per_token(cfg))


def plan_serve(model: str, topology: Topology, mode: str, batch: int, seq: int, *, patches: int = 0,
               mesh_spec: str | None = None, dtype: str = "bfloat16", max_new_tokens: int = 128) -> PlanReport:
    import jax
    import numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec

    from qwen2vl_jax.config import RuntimeConfig, get_preset
    from qwen2vl_jax.generation.cache import CACHE_AXES, cache_length
    from qwen2vl_jax.generation.decode import make_decode, make_prefill
    from qwen2vl_jax.generation.settings import resolve_settings
    from qwen2vl_jax.layout import dummy_bucketed_batch
    from qwen2vl_jax.model import abstract_model
    from qwen2vl_jax.perf.devices import device_spec
    from qwen2vl_jax.sharding.mesh import describe, make_mesh
    from qwen2vl_jax.sharding.params import param_shardings
    from qwen2vl_jax.sharding.rules import activation_spec

    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if batch < 1 or seq < 1 or patches < 0 or max_new_tokens < 1:
        raise ValueError("--batch, --seq and --max-new-tokens must be >= 1 and --patches >= 0")
    cfg = get_preset(model)
    merge = cfg.vision.spatial_merge_size**2
    if patches % merge or patches // merge > seq:
        raise ValueError(f"--patches {patches}: must be a multiple of {merge} whose {patches // merge} merged "
                         f"tokens fit the {seq}-token prompt")
    runtime = RuntimeConfig(dtype=dtype, param_dtype=dtype)
    check_shardings(cfg, runtime, mesh_spec, topology.chips)  # before libtpu: a clear error, fast
    devices = topology_devices(topology)
    chip = device_spec(devices[0].device_kind)
    mesh = make_mesh(mesh_spec, devices)
    abstract = abstract_model(cfg, runtime)
    graphdef, state = nnx.graphdef(abstract), nnx.state(abstract, nnx.Param)
    shardings = param_shardings(state, mesh)
    params = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                          nnx.to_pure_dict(state), shardings)
    n_params = sum(int(x.size) for x in jax.tree.leaves(params))

    def by_batch(x):  # inputs and per-row state: rows over the batch axes (position_ids: [3, B, S])
        names = [None] * len(x.shape)
        if x.shape and x.shape[0] == b:
            names[0] = "batch"
        elif len(x.shape) > 1 and x.shape[1] == b:
            names[1] = "batch"
        return activation_spec(tuple(names), x.shape, mesh)

    def state_axes(x):
        if len(x.shape) == len(CACHE_AXES):
            return activation_spec(CACHE_AXES, x.shape, mesh)
        return by_batch(x)

    knobs = jax.eval_shape(lambda: resolve_settings({}, cfg, {"max_new_tokens": max_new_tokens}).scalars())
    knobs = _sharded(knobs, mesh, lambda x: PartitionSpec())
    rng = _sharded(jax.eval_shape(lambda: jax.random.key(0)), mesh, lambda x: PartitionSpec())
    multiple = runtime.buckets.cache_multiple
    if mode == "prefill":
        b, prompt, cache_len = batch, seq, cache_length(seq, max_new_tokens, multiple)
    else:
        if seq <= max_new_tokens:
            raise ValueError(f"--seq {seq} (the cache length) must exceed --max-new-tokens {max_new_tokens}")
        b, prompt, cache_len = batch, seq - max_new_tokens, seq
    inputs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
              for k, v in dummy_bucketed_batch(cfg, b, prompt, patches or None).items()}
    inputs = _sharded(inputs, mesh, by_batch)
    presence = _sharded(jax.ShapeDtypeStruct((b, cfg.text.vocab_size), np.bool_), mesh, by_batch)
    prefill = make_prefill(graphdef, cache_len, do_sample=False)

    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        if mode == "prefill":
            args = (params, inputs, knobs, presence, rng)
            lowered = prefill.lower(*args)
        else:
            dstate = _sharded(prefill.eval_shape(params, inputs, knobs, presence, rng), mesh, state_axes)
            args = (params, dstate, knobs)
            lowered = make_decode(graphdef, chunk=1, do_sample=False).lower(*args)
    t1 = time.perf_counter()
    compiled, memory, oom, compile_s = compile_plan(lowered, args)

    what = (f"{mode} {model} batch {batch} x {seq} tokens" + (f" + {patches} patches" if patches else "")
            + f", {dtype}")
    shape = (f"prompt bucket {b} x {prompt}, KV cache {cache_len} slots"
             + (" (prompt + --max-new-tokens, rounded up to the cache multiple)" if mode == "prefill"
                else f" (the state after a {prompt}-token prefill), one new token per row"))
    details = [("model", f"preset {model}: {n_params:,} parameters in {dtype}"),
               ("attention", f"vision={runtime.vision_attention_impl} text={runtime.text_attention_impl}"),
               ("step", shape)]
    if compiled is not None:
        details.append(("kernels", f"{mosaic_kernels(compiled)} Pallas (Mosaic) kernel calls in the compiled program"))
    formula = "forward, logits of the last position only" if mode == "prefill" else "forward of B tokens at context S"
    return PlanReport(
        what=what, slice_name=topology.name, chips=mesh.devices.size, device_kind=devices[0].device_kind,
        chip=chip, mesh=describe(mesh), details=details, memory=memory,
        xla_flops=xla_flops_of(compiled) if compiled is not None else None,
        formula_flops=serve_flops(cfg, mode, b, seq, patches) / mesh.devices.size,
        formula_what=formula, lower_s=t1 - t0, compile_s=compile_s, oom=oom)


__all__ = ["MODES", "plan_serve", "serve_flops"]
