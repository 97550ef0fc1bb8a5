"""Prefill at the bucket shape and a fixed-shape decode loop on device (``lax.while_loop``).

* ``make_prefill``: the model over the bucketed prompt [B, S] with a fresh ``KVCache`` of T
  slots (``cache.cache_length``: S + max_new_tokens rounded up); the first new token is sampled
  from position S-1 (prompts are left-padded, so every row's last real token is there).
* ``make_decode``: every row advances one token per loop iteration, with no Python loop and no
  host sync per token. It stops after ``chunk`` tokens, at max_new_tokens, or when all rows have
  finished; streaming callers run it chunk by chunk.
* M-RoPE continues at max(prompt positions) + 1 per row, the same id on all three streams
  (transformers 4.57 ``Qwen2VLModel.forward``: ``cache_position + rope_deltas``): the token
  written at cache slot c gets position c + rope_delta.
* Rows stop independently on any eos id; after that they emit ``pad_token_id``.

Both steps call the model's own ``__call__`` with the cache (``model.py``), so the decoder's
layer code is the only layer code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from qwen2vl_jax.generation.cache import KVCache
from qwen2vl_jax.generation.sampling import pick_token, process_logits
from qwen2vl_jax.model import Qwen2VL


def _first_state(model: Qwen2VL, batch: dict, cache_len: int, knobs: dict, presence: jax.Array,
                 rng: jax.Array, do_sample: bool) -> dict:
    b, s = batch["input_ids"].shape
    cache = KVCache.create(model.text, b, cache_len, model.dtype)
    out = model(batch, cache=cache, last_only=True)
    seg = batch["segment_ids"]
    state = {
        "cache": out["cache"],
        "tokens": jnp.full((b, cache_len - s), knobs["pad_token_id"], jnp.int32),
        # Batch-bucket padding rows (no real token) count as finished from the start, so the
        # loop ends when the caller's rows are done.
        "finished": (seg > 0).sum(-1) == 0, "presence": presence, "step": jnp.int32(0),
        "rng": rng, "rope_deltas": batch["rope_deltas"][:, 0].astype(jnp.int32),
    }
    return _emit(state, out["logits"][:, 0], knobs, do_sample)


def _emit(state: dict, logits: jax.Array, knobs: dict, do_sample: bool) -> dict:
    """Sample the token of generation step ``state['step']`` and record it."""
    step = state["step"]
    rng, sub = jax.random.split(state["rng"])
    token = pick_token(process_logits(logits, state["presence"], step, knobs, do_sample), sub, do_sample)
    token = jnp.where(state["finished"], knobs["pad_token_id"], token)
    is_eos = (token[:, None] == knobs["eos_ids"][None, :]).any(-1)
    rows = jnp.arange(token.shape[0])
    return {
        **state,
        "tokens": jax.lax.dynamic_update_slice(state["tokens"], token[:, None], (0, step)),
        "finished": state["finished"] | is_eos,
        "presence": state["presence"].at[rows, token].set(True),
        "step": step + 1,
        "rng": rng,
        "last_logits": logits,
    }


def _decode_one(model: Qwen2VL, state: dict, knobs: dict, do_sample: bool) -> dict:
    cache: KVCache = state["cache"]
    step = state["step"]
    token = jax.lax.dynamic_slice_in_dim(state["tokens"], step - 1, 1, axis=1)  # [B, 1]: fed now
    b = token.shape[0]
    pos = jnp.broadcast_to((cache.index + state["rope_deltas"])[None, :, None], (3, b, 1))
    batch = {"input_ids": token, "position_ids": pos, "segment_ids": jnp.ones((b, 1), jnp.int32)}
    out = model(batch, cache=cache, last_only=True)
    return _emit({**state, "cache": out["cache"]}, out["logits"][:, 0], knobs, do_sample)


def make_prefill(graphdef: nnx.GraphDef, cache_len: int, do_sample: bool):
    """jit(params, batch, knobs, presence, rng) -> decode state (first token already sampled)."""

    def run(params, batch, knobs, presence, rng):
        model = nnx.merge(graphdef, params)
        return _first_state(model, batch, cache_len, knobs, presence, rng, do_sample)

    return jax.jit(run)


def make_decode(graphdef: nnx.GraphDef, chunk: int, do_sample: bool):
    """jit(params, state, knobs) -> state after at most ``chunk`` more tokens (on-device loop)."""

    def run(params, state, knobs):
        model = nnx.merge(graphdef, params)
        limit = jnp.minimum(state["step"] + chunk,
                            jnp.minimum(knobs["max_new_tokens"], state["tokens"].shape[1]))

        def cond(st):
            return (st["step"] < limit) & ~jnp.all(st["finished"])

        return jax.lax.while_loop(cond, lambda st: _decode_one(model, st, knobs, do_sample), state)

    return jax.jit(run, donate_argnums=(1,))
