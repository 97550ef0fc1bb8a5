"""Generation arguments with transformers' semantics and defaults.

Defaults come from the checkpoint's ``generation_config.json``, then ``config.json``'s token ids,
then transformers' own defaults (``GenerationConfig``: max_new_tokens 20, top_k 50, ...);
explicit arguments win. Everything but ``do_sample`` becomes a traced scalar
(``GenerationSettings.scalars``), so changing a knob never recompiles.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

MAX_EOS_IDS = 8
KNOBS = ("max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p",
         "repetition_penalty")


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

    def validate(self) -> GenerationSettings:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if len(self.eos_token_id) > MAX_EOS_IDS:
            raise ValueError(f"at most {MAX_EOS_IDS} eos_token_id values are supported")
        return self

    def scalars(self) -> dict[str, jax.Array]:
        """The traced knobs (changing them does not recompile)."""
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


def _as_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(x) for x in value) if isinstance(value, (list, tuple)) else (int(value),)


def generation_defaults(gen_cfg: dict[str, Any], model_cfg: Any) -> dict[str, Any]:
    """transformers' defaults: generation_config.json first, then config.json token ids."""
    out: dict[str, Any] = {k: gen_cfg[k] for k in KNOBS if gen_cfg.get(k) is not None}
    eos = _as_ids(gen_cfg.get("eos_token_id", model_cfg.eos_token_id))
    pad = gen_cfg.get("pad_token_id", model_cfg.pad_token_id)
    if pad is None and eos:
        pad = eos[0]  # transformers' fallback (it warns)
    out["eos_token_id"] = eos
    out["pad_token_id"] = 0 if pad is None else int(pad)
    return out


def resolve_settings(gen_cfg: dict[str, Any], model_cfg: Any, args: dict[str, Any]) -> GenerationSettings:
    """Defaults (``generation_defaults``) overridden by the non-None entries of ``args``."""
    merged = generation_defaults(gen_cfg, model_cfg)
    for key in (*KNOBS, "pad_token_id"):
        if args.get(key) is not None:
            merged[key] = args[key]
    if args.get("eos_token_id") is not None:
        merged["eos_token_id"] = _as_ids(args["eos_token_id"])
    merged.setdefault("max_new_tokens", 20)
    merged["seed"] = args.get("seed", 0)
    fields = GenerationSettings.__dataclass_fields__
    return GenerationSettings(**{k: v for k, v in merged.items() if k in fields}).validate()
