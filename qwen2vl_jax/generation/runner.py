"""The host side of ``model.generate`` / ``model.precompile``: bucketing, the repetition-penalty
presence table, the chunked decode loop with streaming, and timings.

Works on any object with ``config``, ``runtime``, ``graphdef``, ``params``,
``generation_config`` and a ``cached_jit(key, build)`` method returning the jitted function
wrapped to run under the model's mesh, with ``lower`` and ``eval_shape`` (the facade in ``hf.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from qwen2vl_jax.generation.cache import cache_length
from qwen2vl_jax.generation.decode import make_decode, make_prefill
from qwen2vl_jax.generation.settings import GenerationSettings, resolve_settings

__all__ = ["GenerationSettings", "generate", "precompile", "settings_for"]
from qwen2vl_jax.layout import bucket_model_inputs, dummy_bucketed_batch

NO_STREAM_CHUNK = 1 << 24  # "decode everything in one call"


def settings_for(model: Any, args: dict[str, Any]) -> GenerationSettings:
    return resolve_settings(model.generation_config, model.config, args)


def _prefill_fn(model: Any, cache_len: int, do_sample: bool) -> Callable:
    return model.cached_jit(("prefill", cache_len, do_sample),
                            lambda: make_prefill(model.graphdef, cache_len, do_sample))


def _decode_fn(model: Any, chunk: int, do_sample: bool) -> Callable:
    return model.cached_jit(("decode", chunk, do_sample), lambda: make_decode(model.graphdef, chunk, do_sample))


def generate(model: Any, batch: dict[str, np.ndarray], settings: GenerationSettings, *,
             streamer: Callable[[np.ndarray], None] | None = None, stream_chunk: int = 16,
             timings: dict[str, float] | None = None) -> np.ndarray:
    """Prompt + new tokens int64[B, S + n] for a ``layout.prepare_model_inputs`` batch."""
    seg = batch["segment_ids"]
    right_padded = [i for i in range(seg.shape[0]) if (np.diff(seg[i]) < 0).any()]
    if right_padded:
        raise ValueError(f"attention_mask rows {right_padded} are right-padded; generation needs "
                         "left padding (the processor's default, padding_side='left')")
    b, _ = batch["input_ids"].shape
    buckets = model.runtime.buckets
    bucketed = bucket_model_inputs(model.config, buckets, batch)
    B, S = bucketed["input_ids"].shape
    # Repetition penalty sees the caller's prompt (not our bucket padding), like transformers.
    presence = np.zeros((B, model.config.text.vocab_size), bool)
    presence[np.arange(b)[:, None], batch["input_ids"]] = True
    T = cache_length(S, settings.max_new_tokens, buckets.cache_multiple)
    knobs = settings.scalars()
    prefill = _prefill_fn(model, T, settings.do_sample)
    decode = _decode_fn(model, stream_chunk if streamer else NO_STREAM_CHUNK, settings.do_sample)
    t0 = time.perf_counter()
    state = jax.block_until_ready(prefill(model.params, bucketed, knobs, presence, jax.random.key(settings.seed)))
    t1 = time.perf_counter()
    emitted = 0
    while True:  # one iteration per chunk (a single one without a streamer)
        step = int(state["step"])
        if streamer and step > emitted:
            streamer(np.asarray(state["tokens"])[:b, emitted:step])
            emitted = step
        if step >= settings.max_new_tokens or np.asarray(state["finished"])[:b].all():
            break
        state = decode(model.params, state, knobs)
    n = int(state["step"])
    if timings is not None:
        timings.update(prefill_s=t1 - t0, decode_s=time.perf_counter() - t1, new_tokens=n)
    new = np.asarray(state["tokens"])[:b, :n].astype(np.int64)
    return np.concatenate([np.asarray(batch["input_ids"], np.int64), new], axis=1)


def precompile(model: Any, settings: GenerationSettings, *, batch_sizes: tuple[int, ...],
               text_buckets: tuple[int, ...], patch_buckets: tuple[int | None, ...],
               stream_chunk: int | None, progress: Callable[[str], None] | None) -> tuple[int, float]:
    """Compile generate's programs for every bucket combination (no execution). Combinations
    whose merged vision tokens cannot fit the text bucket are skipped. Returns (programs, s)."""
    cfg, buckets = model.config, model.runtime.buckets
    knobs = settings.scalars()
    merge2 = cfg.vision.spatial_merge_size**2
    chunks = (NO_STREAM_CHUNK,) + ((stream_chunk,) if stream_chunk else ())
    count, t0 = 0, time.perf_counter()
    for B in batch_sizes:
        presence = np.zeros((B, cfg.text.vocab_size), bool)
        for S in text_buckets:
            prefill = _prefill_fn(model, cache_length(S, settings.max_new_tokens, buckets.cache_multiple),
                                  settings.do_sample)
            for P in patch_buckets:
                if P is not None and P // merge2 > S:
                    continue
                batch = dummy_bucketed_batch(cfg, B, S, P)
                prefill.lower(model.params, batch, knobs, presence, jax.random.key(0)).compile()
                count += 1
                if progress:
                    progress(f"compiled prefill batch={B} text={S} patches={P or 0}")
            state = prefill.eval_shape(model.params, dummy_bucketed_batch(cfg, B, S, None), knobs,
                                       presence, jax.random.key(0))
            for chunk in chunks:
                _decode_fn(model, chunk, settings.do_sample).lower(model.params, state, knobs).compile()
                count += 1
    return count, time.perf_counter() - t0
