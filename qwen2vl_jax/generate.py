"""Generation: static KV cache, prefill at the bucket shape, fixed-shape decode in a while_loop.

* ``prefill`` runs the vision tower, scatter and decoder over the bucketed prompt [B, S], writes
  post-rotary keys/values into a cache of length T (a multiple of ``cache_multiple`` covering
  S + max_new_tokens) and samples the first new token from position S-1 (prompts are
  left-padded, so every row's last real token is there).
* ``decode`` advances every row one token per iteration of a ``lax.while_loop`` on device (no
  Python loop and no host sync per token). It stops after ``chunk`` tokens, at max_new_tokens,
  or when all rows have finished; streaming callers run it chunk by chunk.
* M-RoPE continues at max(prompt positions) + 1 per row (spec §3.4): the token written at cache
  slot c gets position c + rope_delta on all three streams.
* Rows stop independently on any eos id; after that they emit ``pad_token_id``.

Sampling follows transformers' processors in order: repetition penalty, min_new_tokens (eos
masked), then for do_sample temperature, top-k, top-p and a categorical draw; greedy is argmax.
All knobs except ``do_sample`` are traced scalars, so changing them never recompiles.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from qwen2vl_jax.model import Qwen2VL
from qwen2vl_jax.ops.attention import attention
from qwen2vl_jax.ops.rope import mrope_cos_sin

MAX_EOS_IDS = 8


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """Resolved generation arguments (transformers semantics)."""

    max_new_tokens: int = 20
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50  # transformers' default; 0 disables
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int = 0
    seed: int = 0

    def scalars(self) -> dict[str, jax.Array]:
        """The traced knobs (changing them does not recompile)."""
        if len(self.eos_token_id) > MAX_EOS_IDS:
            raise ValueError(f"at most {MAX_EOS_IDS} eos_token_id values are supported")
        eos = list(self.eos_token_id) + [-1] * (MAX_EOS_IDS - len(self.eos_token_id))
        return {
            "max_new_tokens": jnp.int32(self.max_new_tokens),
            "min_new_tokens": jnp.int32(self.min_new_tokens),
            "temperature": jnp.float32(self.temperature),
            "top_k": jnp.int32(self.top_k),
            "top_p": jnp.float32(self.top_p),
            "repetition_penalty": jnp.float32(self.repetition_penalty),
            "eos_ids": jnp.asarray(eos, jnp.int32),
            "pad_token_id": jnp.int32(self.pad_token_id),
        }


# ---------------------------------------------------------------------- sampling


def process_logits(logits: jax.Array, presence: jax.Array, step: jax.Array, knobs: dict,
                   do_sample: bool) -> jax.Array:
    """transformers' logits processors (and warpers if sampling) on float32[B, V]."""
    rp = knobs["repetition_penalty"]
    penalized = jnp.where(logits > 0, logits / rp, logits * rp)
    logits = jnp.where(presence, penalized, logits)  # rp == 1 is an exact identity
    vocab = jnp.arange(logits.shape[-1])
    is_eos = (vocab[:, None] == knobs["eos_ids"][None, :]).any(-1)
    logits = jnp.where(is_eos[None] & (step < knobs["min_new_tokens"]), -jnp.inf, logits)
    if not do_sample:
        return logits
    logits = logits / knobs["temperature"]
    k = knobs["top_k"]
    sorted_desc = -jnp.sort(-logits, axis=-1)
    kth = jax.lax.dynamic_index_in_dim(sorted_desc, jnp.clip(k - 1, 0, logits.shape[-1] - 1), axis=1)
    logits = jnp.where((k > 0) & (logits < kth), -jnp.inf, logits)
    # top-p as transformers: in ascending order, drop the low tail whose cumulative probability
    # is <= 1 - top_p, always keeping the most likely entry; decided per sorted position and
    # scattered back, so tied logits are dropped one by one (never all of them).
    order = jnp.argsort(logits, axis=-1)
    sorted_asc = jnp.take_along_axis(logits, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_asc, axis=-1), axis=-1)
    drop_sorted = (cum <= 1.0 - knobs["top_p"]).at[:, -1].set(False)
    rows = jnp.arange(logits.shape[0])[:, None]
    drop = jnp.zeros_like(drop_sorted).at[rows, order].set(drop_sorted)
    return jnp.where(drop, -jnp.inf, logits)


def pick_token(logits: jax.Array, rng: jax.Array, do_sample: bool) -> jax.Array:
    if do_sample:
        return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


# ---------------------------------------------------------------------- decoder with a cache


def _layers_with_cache(model: Qwen2VL, x, cos, sin, q_seg, cache_k, cache_v, kv_seg, index, prefill: bool):
    """Run all decoder layers, writing this chunk's k/v at cache slot ``index``."""
    impl = model.cfg.text_attention_impl
    graphdef, state = nnx.split(model.decoder.layers)

    def body(carry, xs):
        h, ck, cv = carry
        layer_state, layer_idx = xs
        layer = nnx.merge(graphdef, layer_state)
        q, k, v = layer.project_qkv(h, cos, sin)
        ck = jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), (layer_idx, 0, index, 0, 0))
        cv = jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), (layer_idx, 0, index, 0, 0))
        if prefill:  # the prompt attends to itself (causal, same segment)
            o = attention(q, k, v, q_segment_ids=q_seg, kv_segment_ids=q_seg, causal=True, impl=impl)
        else:  # one new token attends to every valid cache slot (unwritten slots are invalid)
            kk = jax.lax.dynamic_index_in_dim(ck, layer_idx, keepdims=False)
            vv = jax.lax.dynamic_index_in_dim(cv, layer_idx, keepdims=False)
            o = attention(q, kk, vv, q_segment_ids=q_seg, kv_segment_ids=kv_seg, causal=False, impl=impl)
        return (layer.finish(h, o), ck, cv), None

    num_layers = model.cfg.text.num_hidden_layers
    (h, ck, cv), _ = jax.lax.scan(body, (x, cache_k, cache_v), (state, jnp.arange(num_layers)))
    return model.decoder.norm(h), ck, cv


def _first_state(model: Qwen2VL, batch: dict, cache_len: int, knobs: dict, presence: jax.Array,
                 rng: jax.Array, do_sample: bool) -> dict:
    t = model.cfg.text
    dt = jnp.dtype(model.cfg.dtype)
    b, s = batch["input_ids"].shape
    x = model.embed(batch)
    cos, sin = mrope_cos_sin(batch["position_ids"], t.head_dim, t.rope_theta, t.mrope_section, dt)
    shape = (t.num_hidden_layers, b, cache_len, t.num_key_value_heads, t.head_dim)
    cache_k, cache_v = jnp.zeros(shape, dt), jnp.zeros(shape, dt)
    seg = batch["segment_ids"]
    h, cache_k, cache_v = _layers_with_cache(model, x, cos, sin, seg, cache_k, cache_v, None, 0, prefill=True)
    logits = model.logits_from_hidden(h[:, -1:])[:, 0]
    kv_valid = jnp.zeros((b, cache_len), jnp.int32).at[:, :s].set((seg > 0).astype(jnp.int32))
    num_new = cache_len - s
    state = {
        "cache_k": cache_k, "cache_v": cache_v, "kv_valid": kv_valid,
        "tokens": jnp.full((b, num_new), knobs["pad_token_id"], jnp.int32),
        # Batch-bucket padding rows (no real token) count as finished from the start, so the
        # loop ends when the caller's rows are done.
        "finished": (seg > 0).sum(-1) == 0, "presence": presence, "step": jnp.int32(0),
        "rng": rng, "rope_deltas": batch["rope_deltas"][:, 0].astype(jnp.int32),
        "prompt_len": jnp.int32(s), "last_logits": logits,
    }
    return _emit(state, logits, knobs, do_sample)


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
    t = model.cfg.text
    dt = jnp.dtype(model.cfg.dtype)
    step = state["step"]
    index = state["prompt_len"] + step - 1  # cache slot of the token fed now
    token = jax.lax.dynamic_slice_in_dim(state["tokens"], step - 1, 1, axis=1)  # [B, 1]
    b = token.shape[0]
    pos = jnp.broadcast_to((index + state["rope_deltas"])[None, :, None], (3, b, 1))
    cos, sin = mrope_cos_sin(pos, t.head_dim, t.rope_theta, t.mrope_section, dt)
    x = jnp.take(model.embed_tokens[...].astype(dt), token, axis=0)
    kv_valid = jax.lax.dynamic_update_slice(state["kv_valid"], jnp.ones((b, 1), jnp.int32), (0, index))
    q_seg = jnp.ones((b, 1), jnp.int32)
    h, ck, cv = _layers_with_cache(model, x, cos, sin, q_seg, state["cache_k"], state["cache_v"],
                                   kv_valid, index, prefill=False)
    logits = model.logits_from_hidden(h)[:, 0]
    return _emit({**state, "cache_k": ck, "cache_v": cv, "kv_valid": kv_valid}, logits, knobs, do_sample)


# ---------------------------------------------------------------------- jitted entry points


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


def cache_length(prompt_len: int, max_new_tokens: int, multiple: int) -> int:
    need = prompt_len + max_new_tokens
    return -(-need // multiple) * multiple


def generation_defaults(gen_cfg: dict[str, Any], model_cfg: Any) -> dict[str, Any]:
    """transformers' defaults: generation_config.json first, then config.json token ids."""
    out: dict[str, Any] = {}
    for key in ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
                "max_new_tokens", "min_new_tokens"):
        if gen_cfg.get(key) is not None:
            out[key] = gen_cfg[key]
    eos = gen_cfg.get("eos_token_id", model_cfg.eos_token_id)
    pad = gen_cfg.get("pad_token_id", model_cfg.pad_token_id)
    eos_t = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
    if pad is None and eos_t:
        pad = eos_t[0]  # transformers' fallback (it warns)
    out["eos_token_id"] = eos_t
    out["pad_token_id"] = 0 if pad is None else int(pad)
    return out
