"""``config.json`` <-> ``ModelConfig``, for every layout transformers has written.

* the flat hub form: text fields at top level, ``vision_config`` nested (what the released
  checkpoints ship and what ``save_pretrained`` of transformers 4.45-4.51 writes);
* the nested form of transformers >= 4.52: text fields under ``text_config``;
* the v5 form: ``rope_parameters`` instead of ``rope_scaling``.

Mapping rule: a dataclass field is the ``config.json`` key of the same name, except the few
aliases below; fields marked ``NOT_IN_CONFIG_JSON`` are hard-coded in transformers and never
read or written. Unknown keys are errors (a typo must not silently fall back to a default);
the bookkeeping keys of ``PretrainedConfig`` are accepted and ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

from qwen2vl_jax.config.architecture import ModelConfig, TextConfig, VisionConfig

# Keys HF writes into config.json that do not change the computation (PretrainedConfig and
# generation bookkeeping): accepted and ignored.
HF_IGNORED_KEYS = frozenset(
    {
        "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "use_cache",
        "initializer_range", "_name_or_path", "_attn_implementation", "_attn_implementation_autoset",
        "attn_implementation", "output_attentions", "output_hidden_states", "return_dict",
        "torchscript", "use_bfloat16", "tf_legacy_loss", "pruned_heads", "chunk_size_feed_forward",
        "is_encoder_decoder", "is_decoder", "cross_attention_hidden_size", "add_cross_attention",
        "tie_encoder_decoder", "finetuning_task", "id2label", "label2id", "task_specific_params",
        "problem_type", "tokenizer_class", "prefix", "sep_token_id", "decoder_start_token_id",
        "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
        "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
        "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
        "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
        "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
        "suppress_tokens", "begin_suppress_tokens", "layer_types", "vision_token_id",
        "pad_token_id", "bos_token_id", "eos_token_id", "num_labels", "rope_type",
    }
)
VISION_IGNORED_KEYS = frozenset({"model_type", "initializer_range", "rope_parameters", "rope_theta",
                                 "_attn_implementation", "torch_dtype", "dtype"})

# config.json key -> our field, where transformers spells it differently. The first alias of a
# field is the one we write (``in_chans`` / ``spatial_patch_size`` are written too: the hub
# files carry both spellings).
VISION_ALIASES = {
    "hidden_size": "out_hidden_size",
    "in_chans": "in_channels",
    "spatial_patch_size": "patch_size",
    "num_hidden_layers": "depth",  # v5 attribute_map
    "num_attention_heads": "num_heads",  # v5 attribute_map
}
VISION_WRITTEN_ALIASES = {"out_hidden_size": ("hidden_size",), "in_channels": ("in_chans", "in_channels"),
                          "patch_size": ("patch_size", "spatial_patch_size")}

# Architecture fields with no safe default: their absence is an error, never a class default.
TEXT_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "rms_norm_eps", "rope_theta")
VISION_REQUIRED = ("depth", "embed_dim", "num_heads", "out_hidden_size")

TOKEN_ID_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                   "vision_token_id", "bos_token_id", "eos_token_id", "pad_token_id")


def _json_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("config_json", True)]


# ---------------------------------------------------------------------- reading


def config_from_hf_dict(d: dict[str, Any]) -> ModelConfig:
    if not isinstance(d, dict):
        raise ValueError(f"config: expected a JSON object, got {type(d).__name__}")  # noqa: TRY004
    d = dict(d)
    vision_d = _section(d.pop("vision_config", None), "vision_config")
    text_d = _section(d.pop("text_config", None), "text_config")
    # Flat hub form: text fields live at top level. Nested form: top level holds token ids and
    # bookkeeping. Merge top-level text fields into text_d (nested values win).
    top = {key: d.pop(key) for key in list(d) if key in TOKEN_ID_FIELDS}
    for key, value in d.items():
        text_d.setdefault(key, value)
    text = _text_from_hf(text_d)
    vision = _vision_from_hf(vision_d)
    if vision.out_hidden_size != text.hidden_size:
        raise ValueError(f"config: vision_config.hidden_size (merger output, {vision.out_hidden_size}) "
                         f"must equal the text hidden_size ({text.hidden_size})")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in text_d and key not in top:
            top[key] = text_d[key]
    if isinstance(top.get("eos_token_id"), list):
        top["eos_token_id"] = tuple(top["eos_token_id"])  # hashable: the config is static metadata
    _check_token_ids(top, text.vocab_size)
    return ModelConfig(vision=vision, text=text, **top)


def _section(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"config: {name} must be an object, got {type(value).__name__}")  # noqa: TRY004
    return dict(value)


# Token ids the model looks up or emits: each must index the embedding (vision_token_id is never
# used by the model, and checkpoints saved by transformers with a small vocabulary keep its default).
CHECKED_TOKEN_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                     "bos_token_id", "eos_token_id", "pad_token_id")


def _check_token_ids(top: dict[str, Any], vocab_size: int) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    for key in TOKEN_ID_FIELDS:
        value = top.get(key, defaults[key])
        ids = value if isinstance(value, tuple) else (value,)
        if value is None and key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            continue
        for i in ids:
            if not isinstance(i, int) or isinstance(i, bool):
                kind = "an integer or a list of integers" if key == "eos_token_id" else "an integer"
                raise ValueError(f"config: {key} must be {kind}, got {value!r}")  # noqa: TRY004
            if key in CHECKED_TOKEN_IDS and not 0 <= i < vocab_size:
                raise ValueError(f"config: {key} {i} is outside the vocabulary [0, {vocab_size}) "
                                 "(vocab_size too small, or the token ids of another tokenizer)")


def config_from_json_file(path: str | os.PathLike) -> ModelConfig:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: not found (a checkpoint directory needs config.json)") from e
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        d = json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    try:
        return config_from_hf_dict(d)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"config: {name} must be a positive integer, got {value!r}")


def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if origin is tuple:
        args = typing.get_args(annotation)
        return isinstance(value, tuple) and all(_type_ok(v, args[0]) for v in value)
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation) if isinstance(annotation, type) else True  # other forms: unchecked


def _check_types(cls: type, kwargs: dict[str, Any], where: str) -> None:
    """Each value has its field's type (JSON has no tuples: lists are converted first)."""
    hints = typing.get_type_hints(cls)
    for name, value in kwargs.items():
        if not _type_ok(value, hints[name]):
            kind = str(hints[name]).replace("typing.", "").replace("<class '", "").replace("'>", "")
            raise ValueError(f"config: {where}{name} must be of type {kind}, got {value!r}")


def _read_fields(cls: type, d: dict[str, Any], aliases: dict[str, str], ignored: frozenset,
                 where: str) -> dict[str, Any]:
    names = {f.name for f in _json_fields(cls)}
    kwargs, unknown = {}, []
    for key, value in d.items():
        field = aliases.get(key, key)
        if field in names:
            kwargs.setdefault(field, value)
        elif key not in ignored:
            unknown.append(key)
    if unknown:
        raise ValueError(f"config: unknown {where} field(s) {sorted(unknown)}")
    for f in dataclasses.fields(cls):  # coerce JSON lists into the tuples of the schema
        if f.name in kwargs and isinstance(kwargs[f.name], list):
            kwargs[f.name] = tuple(kwargs[f.name])
    _check_types(cls, kwargs, "vision_config." if cls is VisionConfig else "")
    return kwargs


# RoPE types that are M-RoPE's plain (unscaled) frequencies: the released config.json says
# "mrope"; transformers' ``Qwen2VLTextConfig.__init__`` rewrites that to "default" (keeping
# ``mrope_section``) and ``save_pretrained`` then writes both ``type`` and ``rope_type``.
MROPE_TYPES = ("mrope", "default")


def _mrope_section(rope: Any, where: str) -> tuple[int, ...]:
    """``mrope_section`` of a ``rope_scaling`` / ``rope_parameters`` dict, after checking that it
    describes M-RoPE without scaling (the only RoPE this port implements)."""
    if not isinstance(rope, dict):
        raise ValueError(  # noqa: TRY004 - bad input is a ValueError by contract
            f"config: {where} must be a dict with mrope_section, got {rope!r}")
    for key in ("type", "rope_type"):
        kind = rope.get(key)
        if kind is not None and kind not in MROPE_TYPES:
            raise ValueError(
                f"config: {where}.{key} = {kind!r} is not implemented by this port: only M-RoPE without "
                f"scaling ({' / '.join(map(repr, MROPE_TYPES))}, with mrope_section) is; a {kind!r} "
                f"RoPE would be silently computed as unscaled M-RoPE")
    if "mrope_section" not in rope:
        raise ValueError(f"config: {where} must give mrope_section "
                         "(Qwen2-VL uses multimodal RoPE; e.g. [16, 24, 24])")
    section = rope["mrope_section"]
    if (not isinstance(section, (list, tuple)) or len(section) != 3
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in section)):
        raise ValueError(f"config: {where}.mrope_section must be 3 non-negative integers "
                         f"(frequencies of the temporal, height and width axes), got {section!r}")
    return tuple(section)


def _text_from_hf(d: dict[str, Any]) -> TextConfig:
    where = "rope_parameters" if d.get("rope_parameters") and not d.get("rope_scaling") else "rope_scaling"
    rope = d.pop("rope_scaling", None) or d.pop("rope_parameters", None) or {}
    d.pop("rope_parameters", None)
    if "mrope_section" in d:
        raise ValueError("config: mrope_section belongs inside rope_scaling (transformers' layout)")
    kwargs = _read_fields(TextConfig, d, {}, HF_IGNORED_KEYS, "text config")
    if "rope_theta" not in kwargs and "rope_theta" in rope:
        kwargs["rope_theta"] = rope["rope_theta"]  # v5 rope_parameters carries the theta
    missing = [k for k in TEXT_REQUIRED if k not in kwargs]
    if missing:
        raise ValueError(f"config: missing required text config field(s) {missing}")
    kwargs["mrope_section"] = _mrope_section(rope, where)
    if kwargs.get("use_sliding_window"):
        # transformers would use sliding-window attention on layers >= max_window_layers.
        raise ValueError("config: use_sliding_window = true is not implemented by this port (its "
                         "attention is always full causal); the released Qwen2-VL checkpoints have it false")
    kwargs.setdefault("num_key_value_heads", kwargs["num_attention_heads"])
    # The released checkpoints do not state this in the text part of config.json; the value of
    # the released models (not transformers' class default) applies.
    kwargs.setdefault("tie_word_embeddings", False)
    cfg = TextConfig(**kwargs)
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads"):
        _check_positive_int(name, getattr(cfg, name))
    for name in ("rope_theta", "rms_norm_eps"):
        if not _type_ok(getattr(cfg, name), float) or getattr(cfg, name) <= 0:
            raise ValueError(f"config: {name} must be a positive number, got {getattr(cfg, name)!r}")
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"config: hidden_size {cfg.hidden_size} is not divisible by "
                         f"num_attention_heads {cfg.num_attention_heads}")
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ValueError(f"config: num_attention_heads {cfg.num_attention_heads} is not a multiple "
                         f"of num_key_value_heads {cfg.num_key_value_heads}")
    if 2 * sum(cfg.mrope_section) != cfg.head_dim:
        raise ValueError(f"config: mrope_section {list(cfg.mrope_section)} must sum to head_dim/2 "
                         f"= {cfg.head_dim // 2}")
    if cfg.hidden_act != "silu":
        raise ValueError(f"config: text hidden_act {cfg.hidden_act!r} is not supported (only silu)")
    return cfg


def _vision_from_hf(d: dict[str, Any]) -> VisionConfig:
    kwargs = _read_fields(VisionConfig, d, VISION_ALIASES, VISION_IGNORED_KEYS, "vision_config")
    missing = [VISION_WRITTEN_ALIASES.get(k, (k,))[0] for k in VISION_REQUIRED if k not in kwargs]
    if missing:
        raise ValueError(f"config: missing required vision_config field(s) {missing}")
    _check_positive_int("vision_config.hidden_size", kwargs["out_hidden_size"])
    cfg = VisionConfig(**kwargs)
    for name in ("depth", "embed_dim", "num_heads", "in_channels", "patch_size", "temporal_patch_size",
                 "spatial_merge_size"):
        _check_positive_int(f"vision_config.{name}", getattr(cfg, name))
    if cfg.mlp_ratio <= 0 or cfg.mlp_dim < 1:
        raise ValueError(f"config: vision_config.mlp_ratio must be positive, got {cfg.mlp_ratio!r}")
    if cfg.embed_dim % cfg.num_heads:
        raise ValueError(f"config: vision embed_dim {cfg.embed_dim} is not divisible by num_heads "
                         f"{cfg.num_heads}")
    if cfg.hidden_act != "quick_gelu":
        raise ValueError(f"config: vision hidden_act {cfg.hidden_act!r} is not supported "
                         "(Qwen2-VL uses quick_gelu)")
    return cfg


# ---------------------------------------------------------------------- writing


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def config_to_hf_dict(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    out: dict[str, Any] = {"architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
                           "torch_dtype": dtype}
    for f in _json_fields(TextConfig):
        value = getattr(cfg.text, f.name)
        if f.name == "mrope_section":
            out["rope_scaling"] = {"type": "mrope", "mrope_section": list(value)}
        else:
            out[f.name] = _jsonable(value)
    out["use_cache"] = True
    for name in TOKEN_ID_FIELDS:
        value = getattr(cfg, name)
        if value is not None or name != "pad_token_id":
            out[name] = _jsonable(value)
    vision: dict[str, Any] = {}
    for f in _json_fields(VisionConfig):
        for key in VISION_WRITTEN_ALIASES.get(f.name, (f.name,)):
            vision[key] = _jsonable(getattr(cfg.vision, f.name))
    out["vision_config"] = vision
    return out
