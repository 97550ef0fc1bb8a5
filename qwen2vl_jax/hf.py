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
import functools
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
from qwen2vl_jax.generation import runner
from qwen2vl_jax.layout import (
    MODEL_INPUT_KEYS,
    bucket_model_inputs,
    check_grid,
    prepare_model_inputs,
    vision_position_ids,
    vision_segment_ids,
)
from qwen2vl_jax.model import Qwen2VL, abstract_model


def _place(path: tuple[str, ...], host: np.ndarray) -> jax.Array:
    """Host buffer -> device array. device_put copies asynchronously; waiting before the buffer
    is dropped keeps at most one extra tensor alive (else several pile up: +0.3x the model)."""
    return jax.block_until_ready(jax.device_put(host))


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


class Qwen2VLForConditionalGeneration:
    """Holds ``(config, runtime, graphdef, params)``; every computation is a jitted pure function.

    ``params`` (a pure dict or ``nnx.State``) gives the weights; without it the model is randomly
    initialised from ``seed``.
    """

    def __init__(self, config: ModelConfig, params: Any = None, *, runtime: RuntimeConfig | None = None,
                 seed: int = 0, generation_config: dict[str, Any] | None = None):
        self.config = config
        self.runtime = runtime or RuntimeConfig()
        self.generation_config = dict(generation_config or {})
        if params is None:
            model = Qwen2VL(config, self.runtime, rngs=nnx.Rngs(seed))
        else:
            model = abstract_model(config, self.runtime)
            state = nnx.state(model, nnx.Param)
            nnx.replace_by_pure_dict(state, params if isinstance(params, dict) else nnx.to_pure_dict(params))
            nnx.update(model, state)
        self.graphdef, self.params = nnx.split(model, nnx.Param)
        self._jitted: dict[Any, Callable] = {}

    # ------------------------------------------------------------------ loading / saving

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: Any = "float32",
                        progress: Callable[[str], None] | None = None, *, runtime: RuntimeConfig | None = None,
                        **runtime_fields: Any) -> Qwen2VLForConditionalGeneration:
        """Load a HF safetensors directory or a native Orbax checkpoint into ``dtype`` params.

        ``dtype`` sets both the weights' and the compute dtype; other ``RuntimeConfig`` fields
        (``text_attention_impl=...``, ``buckets=...``) may be given as keywords, or a whole
        ``runtime``."""
        d = Path(path)
        if not (d / "config.json").exists():
            raise ValueError(f"{d}: no config.json (expected a HF checkpoint directory or a "
                             "qwen2vl_jax native checkpoint)")
        dt = canonical_dtype(dtype)
        runtime = (runtime or RuntimeConfig()).replace(dtype=dt, param_dtype=dt, **runtime_fields)
        cfg = ModelConfig.from_json_file(d / "config.json")
        abstract = nnx.to_pure_dict(nnx.state(abstract_model(cfg, runtime), nnx.Param))
        if is_native_checkpoint(d):
            params = load_native(d, abstract)
        else:
            params = load_hf_weights(d, cfg, abstract, jnp.dtype(dt), place=_place, progress=progress)
        gen_cfg = {}
        if (d / "generation_config.json").exists():
            with open(d / "generation_config.json") as f:
                gen_cfg = json.load(f)
        return cls(cfg, params, runtime=runtime, generation_config=gen_cfg)

    def save_pretrained(self, out_dir: str | os.PathLike, dtype: Any = None,
                        max_shard_bytes: int = 5 * 2**30) -> Path:
        """Write ``config.json`` + safetensors in the on-disk HF layout (transformers loads it)."""
        d = Path(out_dir)
        dt = self.runtime.param_dtype if dtype is None else canonical_dtype(dtype)
        save_hf_weights(d, self.config, self.pure_params(), dtype=jnp.dtype(dt), max_shard_bytes=max_shard_bytes)
        with open(d / "config.json", "w") as f:
            json.dump(self.config.to_hf_dict(dt), f, indent=2)
        if self.generation_config:
            with open(d / "generation_config.json", "w") as f:
                json.dump(self.generation_config, f, indent=2)
        return d

    def save_native(self, out_dir: str | os.PathLike) -> Path:
        """Write our Orbax checkpoint (see checkpoint/native.py)."""
        return save_native(out_dir, self.config, self.pure_params())

    def pure_params(self) -> dict:
        return nnx.to_pure_dict(self.params)

    @property
    def num_parameters(self) -> int:
        return sum(int(x.size) for x in jax.tree.leaves(self.params))

    def cached_jit(self, key: Any, build: Callable[[], Callable]) -> Callable:
        """The jitted function stored under ``key``, built once."""
        if key not in self._jitted:
            self._jitted[key] = build()
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
        return _vision_fn(self.graphdef)(self.params, pix, vision_position_ids(grid, merge), vision_segment_ids(grid))


@functools.lru_cache(maxsize=8)
def _vision_fn(graphdef: nnx.GraphDef) -> Callable:
    def run(params, pix, pos, seg):
        return nnx.merge(graphdef, params).visual(pix, pos, seg)

    return jax.jit(run)
