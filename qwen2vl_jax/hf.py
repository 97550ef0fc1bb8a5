"""HF-compatible facade: ``Qwen2VLForConditionalGeneration.from_pretrained / __call__ / save_pretrained``.

    from qwen2vl_jax import Qwen2VLForConditionalGeneration
    model = Qwen2VLForConditionalGeneration.from_pretrained(path, dtype="float32")
    out = model(input_ids=..., attention_mask=..., pixel_values=..., image_grid_thw=...)
    out.logits                    # float32 [B, S, vocab]
    model.save_pretrained(out_dir)  # safetensors + config.json that transformers loads

``path`` is a HF checkpoint directory (config.json + model.safetensors or a sharded index), read
with safetensors' numpy backend, or a native Orbax checkpoint written by ``save_native`` /
``qwen2vl-jax convert``. Inputs are numpy (or anything array-like); all layout bookkeeping runs on
the host (layout.prepare_model_inputs) and the model itself is one jitted pure function.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qwen2vl_jax.config import ModelConfig
from qwen2vl_jax.generate import (
    GenerationSettings,
    cache_length,
    generation_defaults,
    make_decode,
    make_prefill,
)
from qwen2vl_jax.layout import MODEL_INPUT_KEYS, bucket_model_inputs, prepare_model_inputs
from qwen2vl_jax.model import Qwen2VL, abstract_model
from qwen2vl_jax.native_checkpoint import is_native_checkpoint, load_native, save_native
from qwen2vl_jax.safetensors_io import load_hf_weights, save_hf_weights

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _canonical_dtype(dtype: Any) -> str:
    name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use 'float32' or 'bfloat16'")
    return _DTYPES[name]


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
    """Holds ``(config, graphdef, params)``; every computation is a jitted pure function."""

    def __init__(self, config: ModelConfig, params: nnx.State | None = None, *, seed: int = 0,
                 generation_config: dict[str, Any] | None = None):
        self.config = config
        self.generation_config = dict(generation_config or {})
        if params is None:
            model = Qwen2VL(config, rngs=nnx.Rngs(seed))
        else:
            model = abstract_model(config)
            state = nnx.state(model, nnx.Param)
            nnx.replace_by_pure_dict(state, params if isinstance(params, dict) else nnx.to_pure_dict(params))
            nnx.update(model, state)
        self.graphdef, self.params = nnx.split(model, nnx.Param)
        self._jitted: dict[Any, Callable] = {}

    # ------------------------------------------------------------------ loading / saving

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: Any = "float32",
                        progress: Callable[[str], None] | None = None, **runtime: Any
                        ) -> Qwen2VLForConditionalGeneration:
        """Load a HF safetensors directory or a native Orbax checkpoint into ``dtype`` params."""
        d = Path(path)
        if not (d / "config.json").exists():
            raise ValueError(f"{d}: no config.json (expected a HF checkpoint directory or a "
                             "qwen2vl_jax native checkpoint)")
        dt = _canonical_dtype(dtype)
        cfg = ModelConfig.from_json_file(d / "config.json", dtype=dt, param_dtype=dt, **runtime)
        abstract = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
        if is_native_checkpoint(d):
            params = load_native(d, abstract)
        else:
            params = load_hf_weights(d, cfg, abstract, jnp.dtype(dt), place=_place, progress=progress)
        gen_cfg = {}
        if (d / "generation_config.json").exists():
            with open(d / "generation_config.json") as f:
                gen_cfg = json.load(f)
        return cls(cfg, params, generation_config=gen_cfg)

    def save_pretrained(self, out_dir: str | os.PathLike, dtype: Any = None,
                        max_shard_bytes: int = 5 * 2**30) -> Path:
        """Write ``config.json`` + safetensors in the on-disk HF layout (transformers loads it)."""
        d = Path(out_dir)
        dt = self.config.param_dtype if dtype is None else _canonical_dtype(dtype)
        save_hf_weights(d, self.config, self.pure_params(), dtype=jnp.dtype(dt),
                        max_shard_bytes=max_shard_bytes)
        cfg_dict = self.config.replace(param_dtype=dt).to_hf_dict()
        with open(d / "config.json", "w") as f:
            json.dump(cfg_dict, f, indent=2)
        if self.generation_config:
            with open(d / "generation_config.json", "w") as f:
                json.dump(self.generation_config, f, indent=2)
        return d

    def save_native(self, out_dir: str | os.PathLike) -> Path:
        """Write our Orbax checkpoint (see native_checkpoint.py)."""
        return save_native(out_dir, self.config, self.pure_params())

    def pure_params(self) -> dict:
        return nnx.to_pure_dict(self.params)

    @property
    def num_parameters(self) -> int:
        return sum(int(x.size) for x in jax.tree.leaves(self.params))

    # ------------------------------------------------------------------ forward

    def _forward_fn(self, collect: bool) -> Callable:
        if collect not in self._jitted:
            graphdef = self.graphdef

            def run(params, batch):
                return nnx.merge(graphdef, params)(batch, collect=collect)

            self._jitted[collect] = jax.jit(run)
        return self._jitted[collect]

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
        bucketed = bucket_model_inputs(self.config, batch)
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
        settings = self._generation_settings(locals())
        batch = self._prepare(input_ids, attention_mask, pixel_values, image_grid_thw,
                              pixel_values_videos, video_grid_thw)
        seg = batch["segment_ids"]
        right_padded = [i for i in range(seg.shape[0]) if (np.diff(seg[i]) < 0).any()]
        if right_padded:
            raise ValueError(f"attention_mask rows {right_padded} are right-padded; generation needs "
                             "left padding (the processor's default, padding_side='left')")
        b, s = batch["input_ids"].shape
        bucketed = bucket_model_inputs(self.config, batch)
        B, S = bucketed["input_ids"].shape
        # Repetition penalty sees the caller's prompt (not our bucket padding), like transformers.
        presence = np.zeros((B, self.config.text.vocab_size), bool)
        presence[np.arange(b)[:, None], batch["input_ids"]] = True
        T = cache_length(S, settings.max_new_tokens, self.config.buckets.cache_multiple)
        knobs = settings.scalars()
        prefill = self._cached(("prefill", T, settings.do_sample), lambda T=T: make_prefill(self.graphdef, T, settings.do_sample))
        chunk = stream_chunk if streamer else 1 << 24
        decode = self._cached(("decode", chunk, settings.do_sample), lambda: make_decode(self.graphdef, chunk, settings.do_sample))
        t0 = time.perf_counter()
        state = jax.block_until_ready(prefill(self.params, bucketed, knobs, presence, jax.random.key(settings.seed)))
        t1 = time.perf_counter()
        emitted = 0
        while True:  # one iteration per chunk (a single one without a streamer)
            step = int(state["step"])
            if streamer and step > emitted:
                streamer(np.asarray(state["tokens"])[:b, emitted:step])
                emitted = step
            if step >= settings.max_new_tokens or np.asarray(state["finished"])[:b].all():
                break
            state = decode(self.params, state, knobs)
        n = int(state["step"])
        if timings is not None:
            timings.update(prefill_s=t1 - t0, decode_s=time.perf_counter() - t1, new_tokens=n)
        new = np.asarray(state["tokens"])[:b, :n].astype(np.int64)
        return np.concatenate([np.asarray(batch["input_ids"], np.int64), new], axis=1)

    def precompile(self, *, batch_sizes: tuple[int, ...] = (1,), text_buckets: tuple[int, ...] | None = None,
                   patch_buckets: tuple[int | None, ...] | None = None, max_new_tokens: int | None = None,
                   do_sample: bool | None = None, stream_chunk: int | None = None,
                   progress: Callable[[str], None] | None = None) -> tuple[int, float]:
        """Compile generate's programs for every bucket combination ahead of time (no execution).

        ``patch_buckets`` may include ``None`` (text-only prompts); combinations whose merged
        vision tokens cannot fit the text bucket are skipped. Defaults: the config's buckets,
        with text-only too. The decode loop is compiled for non-streaming calls and, if
        ``stream_chunk`` is given, for streaming with that chunk. Returns (programs, seconds).
        """
        b_cfg = self.config.buckets
        text_buckets = tuple(text_buckets or b_cfg.text_buckets)
        patch_buckets = tuple(patch_buckets or (None, *b_cfg.patch_buckets))
        settings = self._generation_settings({"max_new_tokens": max_new_tokens, "do_sample": do_sample})
        knobs = settings.scalars()
        merge2 = self.config.vision.spatial_merge_size**2
        chunks = (1 << 24,) + ((stream_chunk,) if stream_chunk else ())
        count, t0 = 0, time.perf_counter()
        for B in batch_sizes:
            for S in text_buckets:
                T = cache_length(S, settings.max_new_tokens, b_cfg.cache_multiple)
                prefill = self._cached(("prefill", T, settings.do_sample),
                                       lambda T=T: make_prefill(self.graphdef, T, settings.do_sample))
                for P in patch_buckets:
                    if P is not None and P // merge2 > S:
                        continue
                    batch = _dummy_batch(self.config, B, S, P)
                    presence = np.zeros((B, self.config.text.vocab_size), bool)
                    rng = jax.random.key(0)
                    prefill.lower(self.params, batch, knobs, presence, rng).compile()
                    count += 1
                    if progress:
                        progress(f"compiled prefill batch={B} text={S} patches={P or 0}")
                state = jax.eval_shape(prefill, self.params, _dummy_batch(self.config, B, S, None), knobs,
                                       np.zeros((B, self.config.text.vocab_size), bool), jax.random.key(0))
                for chunk in chunks:
                    decode = self._cached(("decode", chunk, settings.do_sample),
                                          lambda chunk=chunk: make_decode(self.graphdef, chunk, settings.do_sample))
                    decode.lower(self.params, state, knobs).compile()
                    count += 1
        return count, time.perf_counter() - t0

    def _generation_settings(self, args: dict[str, Any]) -> GenerationSettings:
        merged = generation_defaults(self.generation_config, self.config)
        for key in ("max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p",
                    "repetition_penalty", "pad_token_id"):
            if args.get(key) is not None:
                merged[key] = args[key]
        if args.get("eos_token_id") is not None:
            eos = args["eos_token_id"]
            merged["eos_token_id"] = tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)
        merged.setdefault("max_new_tokens", 20)
        merged["seed"] = args.get("seed", 0)
        settings = GenerationSettings(**{k: v for k, v in merged.items()
                                         if k in GenerationSettings.__dataclass_fields__})
        if settings.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {settings.max_new_tokens}")
        if settings.do_sample and settings.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {settings.temperature}")
        if not 0 < settings.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {settings.top_p}")
        if settings.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {settings.repetition_penalty}")
        return settings

    def _cached(self, key: Any, build: Callable[[], Callable]) -> Callable:
        if key not in self._jitted:
            self._jitted[key] = build()
        return self._jitted[key]

    def get_vision_features(self, pixel_values: Any, grid_thw: Any) -> jax.Array:
        """Merged vision tokens [sum(t*h*w)/4, D] for one packed stream (images or videos)."""
        from qwen2vl_jax.layout import check_grid, vision_position_ids, vision_segment_ids

        pix = np.asarray(pixel_values, dtype=np.float32)
        grid = check_grid(grid_thw, pix.shape[0], self.config.vision.spatial_merge_size, "grid_thw")
        fn = _vision_fn(self.graphdef)
        return fn(self.params, pix, vision_position_ids(grid, self.config.vision.spatial_merge_size),
                  vision_segment_ids(grid))


def _dummy_batch(cfg: ModelConfig, B: int, S: int, P: int | None) -> dict[str, np.ndarray]:
    """Zero arrays with exactly the shapes and dtypes of a bucketed batch (for AOT compiles)."""
    batch = {
        "input_ids": np.zeros((B, S), np.int32), "position_ids": np.zeros((3, B, S), np.int32),
        "segment_ids": np.zeros((B, S), np.int32), "rope_deltas": np.zeros((B, 1), np.int32),
    }
    if P is not None:
        batch.update(pixel_values=np.zeros((P, cfg.vision.patch_dim), np.float32),
                     vision_pos=np.zeros((P, 2), np.int32), vision_segment_ids=np.zeros((P,), np.int32),
                     scatter_index=np.zeros((B, S), np.int32))
    return batch


@functools.lru_cache(maxsize=8)
def _vision_fn(graphdef: nnx.GraphDef) -> Callable:
    def run(params, pix, pos, seg):
        return nnx.merge(graphdef, params).visual(pix, pos, seg)

    return jax.jit(run)
