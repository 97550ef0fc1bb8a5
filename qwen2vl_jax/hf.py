"""HF-compatible facade: ``Qwen2VLForConditionalGeneration.from_pretrained / __call__ / generate / save_pretrained``.

    from qwen2vl_jax import Qwen2VLForConditionalGeneration
    model = Qwen2VLForConditionalGeneration.from_pretrained(path, dtype="float32")
    out = model(input_ids=..., attention_mask=..., pixel_values=..., image_grid_thw=...)
    out.logits                    # float32 [B, S, vocab]
    model.save_pretrained(out_dir)  # safetensors + config.json that transformers loads

``path`` is a HF checkpoint directory (config.json + model.safetensors or a sharded index), read
with safetensors' numpy backend, or a native Orbax checkpoint written by ``save_native`` /
``qwen2vl-jax convert``. ``model.config`` is the architecture (``ModelConfig``, what config.json
says), ``model.runtime`` how it runs (``RuntimeConfig``: dtypes, attention kernels, buckets).
Inputs are numpy (or anything array-like); all layout bookkeeping runs on the host
(``layout.prepare_model_inputs``) and the model itself is one jitted pure function.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen2vl_jax.checkpoint.native import is_native_checkpoint, load_native, save_native
from qwen2vl_jax.checkpoint.safetensors_io import load_hf_weights, save_hf_weights
from qwen2vl_jax.config import ModelConfig, RuntimeConfig, canonical_dtype
from qwen2vl_jax.config.overrides import apply_overrides
from qwen2vl_jax.generation import runner
from qwen2vl_jax.layout import (
    MODEL_INPUT_KEYS,
    bucket_model_inputs,
    check_grid,
    prepare_model_inputs,
    vision_position_ids,
    vision_segment_ids,
)
from qwen2vl_jax.model import abstract_model, init_params
from qwen2vl_jax.sharding.mesh import make_mesh
from qwen2vl_jax.sharding.params import param_shardings
from qwen2vl_jax.sharding.placement import DeviceSink


def resolve_mesh(mesh: Any, runtime: RuntimeConfig) -> jax.sharding.Mesh:
    """A ``Mesh`` as given, or built from a string (or ``runtime.mesh``) over all devices."""
    if isinstance(mesh, jax.sharding.Mesh):
        return mesh
    return make_mesh(mesh if mesh is not None else runtime.mesh)


@dataclasses.dataclass
class Qwen2VLOutput:
    """Like transformers' ``Qwen2VLCausalLMOutputWithPast``, as host numpy arrays in the caller's
    shapes (bucket padding removed): ``logits`` float32[B, S, V], ``position_ids`` [3, B, S],
    ``rope_deltas`` [B, 1]; with ``output_hidden_states`` the decoder input and every layer's
    output [B, S, D] (the last one after the final norm) and ``inputs_embeds``."""

    logits: np.ndarray
    rope_deltas: np.ndarray
    position_ids: np.ndarray
    hidden_states: tuple[np.ndarray, ...] | None = None
    inputs_embeds: np.ndarray | None = None


def save_hf_checkpoint(out_dir: str | os.PathLike, cfg: ModelConfig, params: Any, dtype: Any,
                       generation_config: dict | None, *, write: bool = True,
                       max_shard_bytes: int = 5 * 2**30) -> Path:
    """``config.json``, ``generation_config.json`` and the safetensors of ``params`` (host or
    sharded arrays, streamed tensor by tensor) in the HF layout. In a multi-process run every
    process calls it (the shards are gathered one tensor at a time) and only ``write`` writes."""
    d = Path(out_dir)
    dt = canonical_dtype(dtype)
    save_hf_weights(d, cfg, params, dtype=jnp.dtype(dt), max_shard_bytes=max_shard_bytes, write=write)
    if write:
        (d / "config.json").write_text(json.dumps(cfg.to_hf_dict(dt), indent=2))
        if generation_config:
            (d / "generation_config.json").write_text(json.dumps(generation_config, indent=2))
    return d


class Qwen2VLForConditionalGeneration:
    """Holds ``(config, runtime, mesh, graphdef, params)``; every computation is a jitted pure
    function run under ``jax.set_mesh(mesh)``, with every parameter sharded by the rules table.

    ``params`` (a pure dict or ``nnx.State`` of host or device arrays) gives the weights, each
    placed onto its sharding; without it the model is randomly initialised from ``seed`` under
    ``jit`` straight into its shards. ``mesh``: a ``Mesh``, a string such as ``"fsdp=4,tensor=2"``,
    or None for ``runtime.mesh`` (default: every device on ``fsdp``).
    """

    def __init__(self, config: ModelConfig, params: Any = None, *, runtime: RuntimeConfig | None = None,
                 mesh: Any = None, seed: int = 0, generation_config: dict[str, Any] | None = None):
        self.config = config
        self.runtime = runtime or RuntimeConfig()
        self.mesh = resolve_mesh(mesh, self.runtime)
        self.generation_config = dict(generation_config or {})
        abstract = abstract_model(config, self.runtime)
        self.graphdef, state = nnx.split(abstract, nnx.Param)
        self.shardings = param_shardings(state, self.mesh)
        if params is None:
            with jax.set_mesh(self.mesh):
                pure = init_params(config, self.runtime, seed, self.shardings)
        else:
            pure = params if isinstance(params, dict) else nnx.to_pure_dict(params)
            pure = jax.tree.map(lambda x, sh: x if getattr(x, "sharding", None) == sh else jax.device_put(x, sh),
                                pure, self.shardings)
        nnx.replace_by_pure_dict(state, pure)
        self.params = state
        self._jitted: dict[Any, Callable] = {}

    # ------------------------------------------------------------------ loading / saving

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: Any = "float32",
                        progress: Callable[[str], None] | None = None, *, mesh: Any = None,
                        runtime: RuntimeConfig | None = None, after_write: Callable[[], None] | None = None,
                        overrides: dict | None = None, **runtime_fields: Any) -> Qwen2VLForConditionalGeneration:
        """Load a HF safetensors directory or a native Orbax checkpoint into ``dtype`` params,
        each tensor straight onto its shards of ``mesh`` (see ``__init__``): the host holds one
        tensor (one layer of a stacked parameter) at a time, every device only its shards.

        ``dtype`` sets both the weights' and the compute dtype; other ``RuntimeConfig`` fields
        (``text_attention_impl=...``, ``buckets=...``) may be given as keywords, or a whole
        ``runtime``. ``overrides`` changes architecture fields in the nested form of a recipe's
        ``model.overrides`` (``{"text": {"position_encoding": "rope_1d"}}``): switches that add
        no parameter apply to a released checkpoint as it is. ``after_write`` is called after
        each tensor is placed (tests measure memory)."""
        d = Path(path)
        if not (d / "config.json").exists():
            raise ValueError(f"{d}: no config.json (expected a HF checkpoint directory or a "
                             "qwen2vl_jax native checkpoint)")
        dt = canonical_dtype(dtype)
        runtime = (runtime or RuntimeConfig()).replace(dtype=dt, param_dtype=dt, **runtime_fields)
        mesh = resolve_mesh(mesh, runtime)
        cfg = ModelConfig.from_json_file(d / "config.json")
        if overrides:
            cfg = apply_overrides(cfg, overrides, "overrides")
        state = nnx.state(abstract_model(cfg, runtime), nnx.Param)
        shardings = param_shardings(state, mesh)
        abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                                nnx.to_pure_dict(state), shardings)
        if is_native_checkpoint(d):
            params = load_native(d, abstract)
        else:
            sink = DeviceSink(jnp.dtype(dt), shardings, after_write=after_write)
            params = load_hf_weights(d, cfg, abstract, jnp.dtype(dt), sink=sink, progress=progress)
        gen_cfg = {}
        if (d / "generation_config.json").exists():
            with open(d / "generation_config.json") as f:
                gen_cfg = json.load(f)
        return cls(cfg, params, runtime=runtime, mesh=mesh, generation_config=gen_cfg)

    def save_pretrained(self, out_dir: str | os.PathLike, dtype: Any = None,
                        max_shard_bytes: int = 5 * 2**30) -> Path:
        """Write ``config.json`` + safetensors in the on-disk HF layout (transformers loads it)."""
        dt = self.runtime.param_dtype if dtype is None else canonical_dtype(dtype)
        return save_hf_checkpoint(out_dir, self.config, self.pure_params(), dt, self.generation_config,
                                  max_shard_bytes=max_shard_bytes)

    def save_native(self, out_dir: str | os.PathLike) -> Path:
        """Write our Orbax checkpoint (see checkpoint/native.py)."""
        return save_native(out_dir, self.config, self.pure_params())

    def pure_params(self) -> dict:
        return nnx.to_pure_dict(self.params)

    @property
    def num_parameters(self) -> int:
        return sum(int(x.size) for x in jax.tree.leaves(self.params))

    def cached_jit(self, key: Any, build: Callable[[], Callable]) -> Callable:
        """The jitted function stored under ``key``, built once; it runs under the model's mesh."""
        if key not in self._jitted:
            self._jitted[key] = _under_mesh(build(), self.mesh)
        return self._jitted[key]

    # ------------------------------------------------------------------ forward

    def _forward_fn(self, collect: bool) -> Callable:
        graphdef = self.graphdef

        def build():
            return jax.jit(lambda params, batch: nnx.merge(graphdef, params)(batch, collect=collect))

        return self.cached_jit(("forward", collect), build)

    def __call__(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        pixel_values: Any = None,
        image_grid_thw: Any = None,
        pixel_values_videos: Any = None,
        video_grid_thw: Any = None,
        output_hidden_states: bool = False,
    ) -> Qwen2VLOutput:
        """Full forward pass. ``hidden_states`` (if requested) follows transformers: the decoder
        input, then each layer's output, the last one after the final norm."""
        batch = self._prepare(input_ids, attention_mask, pixel_values, image_grid_thw,
                              pixel_values_videos, video_grid_thw)
        b, s = batch["input_ids"].shape
        bucketed = bucket_model_inputs(self.config, self.runtime.buckets, batch)
        device_batch = {k: v for k, v in bucketed.items() if k in MODEL_INPUT_KEYS}
        out = self._forward_fn(output_hidden_states)(self.params, device_batch)
        S = bucketed["input_ids"].shape[1]

        def real(x):  # drop the bucket padding (on the host: an eager slice would compile per size)
            return np.asarray(x)[:b, S - s:]

        hidden = None
        if output_hidden_states:
            layers = np.asarray(out["layer_outputs"])
            hidden = (real(out["inputs_embeds"]), *[real(layers[i]) for i in range(layers.shape[0] - 1)],
                      real(out["last_hidden_state"]))
        return Qwen2VLOutput(
            logits=real(out["logits"]), rope_deltas=batch["rope_deltas"], position_ids=batch["position_ids"],
            hidden_states=hidden, inputs_embeds=real(out["inputs_embeds"]) if output_hidden_states else None,
        )

    def _prepare(self, input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos,
                 video_grid_thw) -> dict[str, np.ndarray]:
        given = np.asarray(input_ids)
        if given.dtype.kind not in "iu" or given.ndim not in (1, 2) or given.size == 0:
            raise ValueError(f"input_ids must be a non-empty [batch, seq] array of integer token ids, got "
                             f"{given.dtype} {tuple(given.shape)}")
        if attention_mask is not None:
            mask = np.asarray(attention_mask)
            if mask.shape != given.shape:
                raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {given.shape}")
            if not np.isin(mask, (0, 1)).all() or not mask.reshape(-1, given.shape[-1]).any(axis=-1).all():
                raise ValueError("attention_mask must hold 0 / 1 with at least one 1 (a real token) per row")
        batch = prepare_model_inputs(self.config, input_ids, attention_mask, pixel_values,
                                     image_grid_thw, pixel_values_videos, video_grid_thw)
        ids = batch["input_ids"]
        if int(ids.max(initial=0)) >= self.config.text.vocab_size or ids.min(initial=0) < 0:
            raise ValueError(f"input_ids contain ids outside [0, {self.config.text.vocab_size})")
        return batch

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        pixel_values: Any = None,
        image_grid_thw: Any = None,
        pixel_values_videos: Any = None,
        video_grid_thw: Any = None,
        *,
        max_new_tokens: int | None = None,
        min_new_tokens: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        seed: int = 0,
        streamer: Callable[[np.ndarray], None] | None = None,
        stream_chunk: int = 16,
        timings: dict[str, float] | None = None,
    ) -> np.ndarray:
        """Prompt + new tokens, int64[B, S + n] (transformers semantics).

        Defaults come from the checkpoint's generation_config.json, then config.json; explicit
        arguments win. Rows stop independently at an eos id and are padded with pad_token_id
        afterwards; generation ends when every row has stopped or after max_new_tokens (20 if
        unset anywhere). ``streamer(tokens)`` receives each new chunk (int32[B, k]) as it is
        decoded, every ``stream_chunk`` tokens; the decode loop runs on device in between.
        ``timings`` (a dict) receives ``prefill_s`` (prompt -> first token, including any
        compilation), ``decode_s`` and ``new_tokens``.
        """
        settings = runner.settings_for(self, locals())
        batch = self._prepare(input_ids, attention_mask, pixel_values, image_grid_thw,
                              pixel_values_videos, video_grid_thw)
        return runner.generate(self, batch, settings, streamer=streamer, stream_chunk=stream_chunk,
                               timings=timings)

    def generation_settings(self, **args: Any) -> runner.GenerationSettings:
        """The resolved generation arguments for ``generate(**args)`` (defaults filled in)."""
        return runner.settings_for(self, args)

    def precompile(self, *, batch_sizes: tuple[int, ...] = (1,), text_buckets: tuple[int, ...] | None = None,
                   patch_buckets: tuple[int | None, ...] | None = None, max_new_tokens: int | None = None,
                   do_sample: bool | None = None, stream_chunk: int | None = None,
                   progress: Callable[[str], None] | None = None) -> tuple[int, float]:
        """Compile generate's programs for every bucket combination ahead of time (no execution).

        ``patch_buckets`` may include ``None`` (text-only prompts). Defaults: the runtime's
        buckets, with text-only too. The decode loop is compiled for non-streaming calls and, if
        ``stream_chunk`` is given, for streaming with that chunk. Returns (programs, seconds).
        """
        buckets = self.runtime.buckets
        settings = runner.settings_for(self, {"max_new_tokens": max_new_tokens, "do_sample": do_sample})
        return runner.precompile(self, settings, batch_sizes=batch_sizes,
                                 text_buckets=tuple(text_buckets or buckets.text_buckets),
                                 patch_buckets=tuple(patch_buckets or (None, *buckets.patch_buckets)),
                                 stream_chunk=stream_chunk, progress=progress)

    def get_vision_features(self, pixel_values: Any, grid_thw: Any) -> jax.Array:
        """Merged vision tokens [sum(t*h*w)/4, D] for one packed stream (images or videos)."""
        pix = np.asarray(pixel_values, dtype=np.float32)
        merge = self.config.vision.spatial_merge_size
        grid = check_grid(grid_thw, pix.shape[0], merge, "grid_thw")
        graphdef = self.graphdef
        fn = self.cached_jit("vision", lambda: jax.jit(
            lambda params, pix, pos, seg: nnx.merge(graphdef, params).visual(pix, pos, seg)))
        return fn(self.params, pix, vision_position_ids(grid, merge), vision_segment_ids(grid))


class _under_mesh:
    """A jitted function that always runs (and lowers) under ``jax.set_mesh(mesh)``."""

    def __init__(self, fn: Callable, mesh: jax.sharding.Mesh):
        self.fn, self.mesh = fn, mesh

    def __call__(self, *args, **kwargs):
        with jax.set_mesh(self.mesh):
            return self.fn(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with jax.set_mesh(self.mesh):
            return self.fn.lower(*args, **kwargs)

    def eval_shape(self, *args, **kwargs):
        with jax.set_mesh(self.mesh):
            return jax.eval_shape(self.fn, *args, **kwargs)
