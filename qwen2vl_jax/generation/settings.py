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
import numpy as np

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
        """ValueError naming the first argument that is of the wrong type or out of range."""
        for name, low in (("max_new_tokens", 1), ("min_new_tokens", 0), ("top_k", 0), ("pad_token_id", 0)):
            _check_int(name, getattr(self, name), low)
        _check_int("seed", self.seed, None, int32=False)
        if not isinstance(self.do_sample, (bool, np.bool_)):
            raise ValueError(f"do_sample must be true or false, got {self.do_sample!r}")  # noqa: TRY004
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if not _is_number(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if len(self.eos_token_id) > MAX_EOS_IDS:
            raise ValueError(f"at most {MAX_EOS_IDS} eos_token_id values are supported, "
                             f"got {len(self.eos_token_id)}")
        for i in self.eos_token_id:
            _check_int("eos_token_id", i, 0)
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


_INT32_MAX = 2**31 - 1


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)) \
        and bool(np.isfinite(value))


def _check_int(name: str, value: Any, low: int | None, int32: bool = True) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be an integer, got {value!r}")  # noqa: TRY004
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if int32 and abs(int(value)) > _INT32_MAX:
        raise ValueError(f"{name} must fit in 32 bits, got {value}")


def _as_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    ids = tuple(value) if isinstance(value, (list, tuple, np.ndarray)) else (value,)
    for i in ids:
        _check_int("eos_token_id", i, 0)
    return tuple(int(i) for i in ids)


def generation_defaults(gen_cfg: dict[str, Any], model_cfg: Any) -> dict[str, Any]:
    """transformers' defaults: generation_config.json first, then config.json token ids."""
    out: dict[str, Any] = {k: gen_cfg[k] for k in KNOBS if gen_cfg.get(k) is not None}
    eos = _as_ids(gen_cfg.get("eos_token_id", model_cfg.eos_token_id))
    pad = gen_cfg.get("pad_token_id", model_cfg.pad_token_id)
    if pad is None and eos:
        pad = eos[0]  # transformers' fallback (it warns)
    out["eos_token_id"] = eos
    out["pad_token_id"] = 0 if pad is None else pad  # validated with the rest
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
    settings = GenerationSettings(**{k: v for k, v in merged.items() if k in fields}).validate()
    vocab = model_cfg.text.vocab_size
    for name, ids in (("eos_token_id", settings.eos_token_id), ("pad_token_id", (settings.pad_token_id,))):
        outside = [i for i in ids if i >= vocab]
        if outside:
            raise ValueError(f"{name} {outside[0]} is outside the vocabulary [0, {vocab})")
    return settings
