"""Memory per GPU from our own arithmetic (no compiler): the rows ``plan --gpu`` prints, marked
as estimates. XLA:GPU cannot compile for a GPU this machine does not have, so nothing here is
measured; the same arithmetic applied to a TPU plan's per-chip program lands within the
margins stated in experiments/tpu/README.md.

Per device, with P parameters of which T train, ``shard`` = fsdp x tensor (the parameters'
split; ``data`` replicates), b(x) the bytes of dtype x:

* parameters ``P b(param) / shard``; gradients ``3 T 4 / shard`` (three fp32 buffers at the
  peak: the microbatch scan's sum, one microbatch's / the normalised gradients, Adam's update);
  Adam ``2 T b(param) / shard`` (mu, nu);
* the step's batch as the loop feeds it (``grad_accum`` microbatches of int32 ids and fp32
  patches);
* activations of one microbatch (``rows`` packed rows: n_t = rows x text_budget tokens,
  n_v = rows x patches_per_row patches), in the compute dtype, split by ``tensor`` where the
  rules table splits them (the head and MLP terms below); kept per layer by the tower's remat
  policy (D, H, K, d, I: hidden, heads, kv heads, head dim, MLP units; E, M: the ViT's width and
  MLP units):

  ======================  ===============================  ============================
  policy                  text decoder, per token          ViT, per patch
  ======================  ===============================  ============================
  none                    6D + 2Hd + 3Kd + 3I              11E + 2M
  full                    D                                E
  dots                    3D + Hd + 2Kd + 2I               6E + M
  attention               D + Hd                           2E
  qkv_attention           D + 2Hd + 2Kd                    5E
  ======================  ===============================  ============================

  plus the working set of the one layer being differentiated (the ``none`` row, twice: values
  and their gradients) and the loss's logits chunk (512 tokens x vocab, fp32, three buffers).
  A frozen ViT keeps none (nothing before it trains); a frozen LLM under a trained ViT does;
* one layer's weights gathered for FSDP in the compute dtype, twice (prefetch of the next).

Inference: bf16 weights ``P 2 / shard``, the KV cache ``2 L B T K d b / (batch split x kv-head
split)``, and one layer's working set of the prefill chunk (or of one token per row), plus
the fp32 logits of the last position.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from qwen2vl_jax.perf.devices import DeviceSpec, device_spec
from qwen2vl_jax.plan.report import GIB

GPU_NAMES = ("h100", "h200", "a100", "h100-nvl", "h200-nvl", "gh200")


def _bytes(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else 4


def _text_per_token(t: Any, policy: str, tensor: int) -> float:
    d, hd, kd, i = t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim, \
        t.intermediate_size
    hd, kd, i = hd / tensor, max(kd / tensor, t.head_dim), i / tensor
    return {"none": 6 * d + 2 * hd + 3 * kd + 3 * i, "full": d, "dots": 3 * d + hd + 2 * kd + 2 * i,
            "attention": d + hd, "qkv_attention": d + 2 * hd + 2 * kd}[policy]


def _vision_per_patch(v: Any, policy: str, tensor: int) -> float:
    e, m = v.embed_dim, v.mlp_dim / tensor
    e_split = e / tensor
    return {"none": 5 * e + 6 * e_split + 2 * m, "full": e, "dots": 3 * e + 3 * e_split + m,
            "attention": e + e_split, "qkv_attention": e + 4 * e_split}[policy]


def _layer_params(cfg: Any) -> tuple[int, int]:
    """Weights of one decoder layer and of one ViT block."""
    t, v = cfg.text, cfg.vision
    d, hd, kd = t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    text = d * (hd + 2 * kd) + hd * d + 3 * d * t.intermediate_size
    vision = 4 * v.embed_dim**2 + 2 * v.embed_dim * v.mlp_dim
    return text, vision


@dataclasses.dataclass
class Estimate:
    what: str
    gpus: int
    chip: DeviceSpec
    mesh: str
    rows: list[tuple[str, float]]  # (label, bytes per device)

    @property
    def total(self) -> float:
        return sum(b for _, b in self.rows)

    def lines(self) -> list[str]:
        c = self.chip
        out = [f"plan: {self.what}",
               f"node: {self.gpus} x {c.name} ({c.hbm_gib:g} GiB HBM, {c.peak_bf16_tflops:g} TFLOP/s bf16 peak)",
               f"mesh: {self.mesh}",
               "memory per GPU: ESTIMATE from our arithmetic (qwen2vl_jax/plan/estimate.py), not a compiled program"]
        out += [f"  {label:<42} {b / GIB:10.3f} GiB" for label, b in self.rows]
        fits = self.total <= c.hbm_gib * GIB
        out.append(f"  {'total':<42} {self.total / GIB:10.3f} GiB of {c.hbm_gib:g} GiB")
        out.append(f"per-chip total: {self.total / GIB:.2f} GiB of {c.hbm_gib:g} GiB HBM "
                   f"({'fits' if fits else 'does not fit'})")
        return out


def gpu_spec(name: str) -> DeviceSpec:
    spec = device_spec(name)
    if spec is None or spec.name not in GPU_NAMES:
        raise ValueError(f"--gpu {name!r}: one of {', '.join(GPU_NAMES)}")
    return spec


def _mesh(spec: str | None, gpus: int) -> tuple[dict[str, int], str]:
    from qwen2vl_jax.sharding.mesh import MESH_AXES, parse_mesh

    sizes = parse_mesh(spec, gpus)
    return sizes, ",".join(f"{a}={sizes[a]}" for a in MESH_AXES)


def estimate_train(run: Any, cfg: Any, gpu: str, gpus: int, mesh_spec: str | None, what: str) -> Estimate:
    from qwen2vl_jax.layout.packing import packed_batch_shapes
    from qwen2vl_jax.model import count_params
    from qwen2vl_jax.plan.topology import check_shardings

    check_shardings(cfg, run.runtime, mesh_spec, gpus)
    sizes, mesh = _mesh(mesh_spec, gpus)
    shard, tensor = sizes["fsdp"] * sizes["tensor"], sizes["tensor"]
    rt, f = run.runtime, run.freeze
    pb, cb = _bytes(rt.param_dtype), _bytes(rt.dtype)
    total = count_params(cfg)
    vision_blocks = cfg.vision.depth * _layer_params(cfg)[1]
    vit = vision_blocks + cfg.vision.patch_dim * cfg.vision.embed_dim
    merger = cfg.vision.merge_dim**2 + cfg.vision.merge_dim * cfg.vision.out_hidden_size
    llm = total - vit - merger
    trained = (0 if f.freeze_vision else vit) + (0 if f.freeze_merger else merger) + (0 if f.freeze_llm else llm)
    rows_n = run.per_device_batch_size
    shapes = packed_batch_shapes(cfg, rows_n, run.data.text_budget, rows_n * run.data.patches_per_row)
    batch = run.grad_accum * sum(math.prod(s) * np.dtype(dt).itemsize for s, dt in shapes.values())
    n_t, n_v = rows_n * run.data.text_budget, rows_n * run.data.patches_per_row
    t, v = cfg.text, cfg.vision
    text_keep = t.num_hidden_layers * n_t * _text_per_token(t, rt.text_remat, tensor) * cb
    vision_keep = 0.0 if f.freeze_vision else v.depth * n_v * _vision_per_patch(v, rt.vision_remat, tensor) * cb
    work = 2 * cb * max(n_t * _text_per_token(t, "none", tensor), n_v * _vision_per_patch(v, "none", tensor))
    logits = 3 * 512 * rows_n * t.vocab_size / tensor * 4
    text_layer, vision_layer = _layer_params(cfg)
    gathered = 2 * cb * max(text_layer, vision_layer) / tensor
    rows = [("parameters", total * pb / shard), ("gradients + update (fp32, 3 buffers)", 3 * trained * 4 / shard),
            ("Adam moments", 2 * trained * pb / shard), ("batch (all microbatches)", float(batch)),
            (f"text activations kept (remat {rt.text_remat})", text_keep),
            (f"vision activations kept (remat {rt.vision_remat})", vision_keep),
            ("one layer's backward working set", work), ("loss logits chunk", logits),
            ("gathered layer weights (FSDP)", gathered)]
    return Estimate(what, gpus, gpu_spec(gpu), mesh, rows)


def estimate_serve(model: str, mode: str, batch: int, seq: int, patches: int, dtype: str, gpu: str, gpus: int,
                   mesh_spec: str | None, max_new_tokens: int) -> Estimate:
    from qwen2vl_jax.config import RuntimeConfig, get_preset
    from qwen2vl_jax.generation.cache import cache_length
    from qwen2vl_jax.model import count_params
    from qwen2vl_jax.plan.topology import check_shardings

    cfg = get_preset(model)
    check_shardings(cfg, RuntimeConfig(dtype=dtype, param_dtype=dtype), mesh_spec, gpus)
    sizes, mesh = _mesh(mesh_spec, gpus)
    shard, tensor = sizes["fsdp"] * sizes["tensor"], sizes["tensor"]
    split_b = math.gcd(batch, sizes["data"] * sizes["fsdp"])
    t, b = cfg.text, _bytes(dtype)
    cache_len = cache_length(seq, max_new_tokens, 128) if mode == "prefill" else seq
    kv = t.num_key_value_heads * max(1, tensor // t.num_key_value_heads)
    kv_split = min(tensor, kv)
    cache = 2 * t.num_hidden_layers * batch * cache_len * kv * t.head_dim * b / (split_b * kv_split)
    tokens = (batch * seq if mode == "prefill" else batch) / split_b
    work = 2 * b * tokens * _text_per_token(t, "none", tensor)
    if patches and mode == "prefill":
        work = max(work, 2 * b * patches * _vision_per_patch(cfg.vision, "none", tensor))
    rows = [("parameters", count_params(cfg) * b / shard), (f"KV cache ({cache_len} slots)", cache),
            ("one layer's working set", work), ("last-position logits (fp32)", batch / split_b * t.vocab_size * 4)]
    what = f"{mode} {model} batch {batch} x {seq} tokens" + (f" + {patches} patches" if patches else "") + f", {dtype}"
    return Estimate(what, gpus, gpu_spec(gpu), mesh, rows)


__all__ = ["GPU_NAMES", "Estimate", "estimate_serve", "estimate_train", "gpu_spec"]
