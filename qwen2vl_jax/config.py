"""Model configuration: frozen dataclasses, the released presets, and HF config.json I/O.

The presets are the hub values of spec §1 (not transformers' class defaults, which describe no
shipped model: spec §1.1 "pitfall"). ``from_hf_dict`` reads the three on-disk layouts that exist
in the wild: the flat hub ``config.json`` (text fields at top level, ``vision_config`` nested), the
nested ``text_config``/``vision_config`` form written by transformers >= 4.52, and the v5
``rope_parameters`` form. ``to_hf_dict`` writes the flat hub form, which every transformers
version since 4.45 loads.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

# Fields that HF writes into config.json but that do not change the computation (bookkeeping of
# PretrainedConfig / generation). They are accepted and ignored; anything else unknown is an error.
_HF_IGNORED_KEYS = frozenset(
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


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """ViT + merger (spec §1.2). Identical for all sizes except ``out_hidden_size``."""

    depth: int = 32
    embed_dim: int = 1280
    num_heads: int = 16
    mlp_ratio: float = 4.0
    out_hidden_size: int = 1536  # merger output = LLM hidden size ("hidden_size" in HF's vision_config)
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    hidden_act: str = "quick_gelu"
    rope_theta: float = 10000.0  # hard-coded in transformers 4.x
    layer_norm_eps: float = 1e-6  # hard-coded in transformers

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch row of ``pixel_values`` (1176 for the released models)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_dim(self) -> int:
        return self.embed_dim * self.spatial_merge_size**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Qwen2 decoder (spec §1.1)."""

    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    hidden_act: str = "silu"
    attention_dropout: float = 0.0
    use_sliding_window: bool = False
    sliding_window: int | None = 32768
    max_window_layers: int = 28

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def _powers_of_two(start: int, stop: int) -> tuple[int, ...]:
    out, n = [], start
    while n <= stop:
        out.append(n)
        n *= 2
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class BucketConfig:
    """Fixed compiled shapes (ARCHITECTURE "Fixed-shape token buckets").

    Every input is padded up to the smallest bucket that fits: all images and video slices of a
    batch form one patch stream padded to a ``patch_buckets`` entry, text is left-padded to a
    ``text_buckets`` entry and the batch to a ``batch_buckets`` entry. Sizes are sorted; the
    patch buckets must be multiples of spatial_merge_size**2 so merge windows stay whole.
    """

    patch_buckets: tuple[int, ...] = _powers_of_two(256, 65536)
    text_buckets: tuple[int, ...] = _powers_of_two(128, 32768)
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    # Decode-cache lengths (prompt bucket + new tokens) are rounded up to a multiple of this.
    cache_multiple: int = 128

    def __post_init__(self):
        for name in ("patch_buckets", "text_buckets", "batch_buckets"):
            sizes = tuple(sorted(int(x) for x in getattr(self, name)))
            if not sizes or sizes[0] <= 0:
                raise ValueError(f"BucketConfig.{name} must be a non-empty list of positive sizes")
            object.__setattr__(self, name, sizes)


# The names ops.attention.attention accepts (kept here so the config needs no jax import).
ATTENTION_IMPLS = ("auto", "xla", "xla_blocked", "block_sparse", "splash", "pallas_gpu", "cudnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The whole model, plus the runtime choices that do not change the weights.

    ``dtype`` is the compute dtype, ``param_dtype`` the storage dtype of the weights (fp32 master
    weights with bf16 compute is ``param_dtype="float32", dtype="bfloat16"``).
    """

    vision: VisionConfig = dataclasses.field(default_factory=VisionConfig)
    text: TextConfig = dataclasses.field(default_factory=TextConfig)
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    vision_token_id: int = 151654
    bos_token_id: int | None = 151643
    eos_token_id: int | tuple[int, ...] | None = 151645
    pad_token_id: int | None = None
    # Runtime (not part of the checkpoint).
    dtype: str = "float32"
    param_dtype: str = "float32"
    # Attention implementation per tower, one of ATTENTION_IMPLS (ops/attention.py). "auto": our
    # block-sparse Pallas kernel on TPU/GPU, the XLA paths on CPU (xla_blocked for the ViT).
    vision_attention_impl: str = "auto"
    text_attention_impl: str = "auto"
    remat: str = "none"  # "none" | "full" | "dots": rematerialisation policy for scanned layers
    buckets: BucketConfig = dataclasses.field(default_factory=BucketConfig)

    def __post_init__(self):
        for name in ("vision_attention_impl", "text_attention_impl"):
            if getattr(self, name) not in ATTENTION_IMPLS:
                raise ValueError(f"config: {name} {getattr(self, name)!r} is not one of {ATTENTION_IMPLS}")

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF config.json I/O

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **runtime: Any) -> ModelConfig:
        """Build a config from a HF ``config.json`` dict (flat hub, nested >=4.52, or v5 form).

        Raises ``ValueError`` naming every unknown field, and every architecture field that is
        missing (we never substitute transformers' class defaults: spec §1.1).
        """
        d = dict(d)
        vision_d = dict(d.pop("vision_config", None) or {})
        text_d = dict(d.pop("text_config", None) or {})
        # Flat hub form: text fields live at top level. Nested form: top level holds token ids
        # and bookkeeping. Merge top-level text fields into text_d (nested values win).
        top_ids = {}
        for key in list(d):
            if key in _TOP_LEVEL_FIELDS:
                top_ids[key] = d.pop(key)
        for key, value in d.items():
            text_d.setdefault(key, value)
        text = _text_from_hf(text_d)
        vision = _vision_from_hf(vision_d)
        _check_int("vision_config.hidden_size", vision.out_hidden_size)
        if vision.out_hidden_size != text.hidden_size:
            raise ValueError(
                f"config: vision_config.hidden_size (merger output, {vision.out_hidden_size}) must "
                f"equal the text hidden_size ({text.hidden_size})"
            )
        kwargs = {k: v for k, v in top_ids.items() if k in {f.name for f in dataclasses.fields(cls)}}
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if key in text_d and key not in kwargs:
                kwargs[key] = text_d[key]
        if isinstance(kwargs.get("eos_token_id"), list):
            # Tuples keep the config hashable (it is static metadata of the jitted model).
            kwargs["eos_token_id"] = tuple(kwargs["eos_token_id"])
        return cls(vision=vision, text=text, **kwargs, **runtime)

    def to_hf_dict(self) -> dict[str, Any]:
        """The flat hub ``config.json`` form (loads in transformers 4.45 ... 5.x)."""
        t, v = self.text, self.vision
        out: dict[str, Any] = {
            "architectures": ["Qwen2VLForConditionalGeneration"],
            "model_type": "qwen2_vl",
            "torch_dtype": self.param_dtype,
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "hidden_act": t.hidden_act,
            "max_position_embeddings": t.max_position_embeddings,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_theta": t.rope_theta,
            "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
            "tie_word_embeddings": t.tie_word_embeddings,
            "attention_dropout": t.attention_dropout,
            "use_sliding_window": t.use_sliding_window,
            "sliding_window": t.sliding_window,
            "max_window_layers": t.max_window_layers,
            "use_cache": True,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
            else self.eos_token_id,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "vision_token_id": self.vision_token_id,
            "vision_config": {
                "depth": v.depth,
                "embed_dim": v.embed_dim,
                "num_heads": v.num_heads,
                "mlp_ratio": v.mlp_ratio,
                "hidden_size": v.out_hidden_size,
                "in_chans": v.in_channels,
                "in_channels": v.in_channels,
                "patch_size": v.patch_size,
                "spatial_patch_size": v.patch_size,
                "temporal_patch_size": v.temporal_patch_size,
                "spatial_merge_size": v.spatial_merge_size,
                "hidden_act": v.hidden_act,
            },
        }
        if self.pad_token_id is not None:
            out["pad_token_id"] = self.pad_token_id
        return out

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **runtime: Any) -> ModelConfig:
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from e
        try:
            return cls.from_hf_dict(d, **runtime)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e


_TOP_LEVEL_FIELDS = frozenset(
    {"image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
     "vision_token_id", "bos_token_id", "eos_token_id", "pad_token_id"}
)

# HF text-config key -> our field. Keys marked None are read specially (rope) or ignored.
_TEXT_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_key_value_heads",
    "max_position_embeddings": "max_position_embeddings",
    "rope_theta": "rope_theta",
    "rms_norm_eps": "rms_norm_eps",
    "tie_word_embeddings": "tie_word_embeddings",
    "hidden_act": "hidden_act",
    "attention_dropout": "attention_dropout",
    "use_sliding_window": "use_sliding_window",
    "sliding_window": "sliding_window",
    "max_window_layers": "max_window_layers",
}
# Architecture fields with no safe default: their absence is an error, never a class default.
_TEXT_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "rms_norm_eps", "rope_theta")

_VISION_KEYS = {
    "depth": "depth",
    "num_hidden_layers": "depth",  # v5 attribute_map alias
    "embed_dim": "embed_dim",
    "num_heads": "num_heads",
    "num_attention_heads": "num_heads",  # v5 alias
    "mlp_ratio": "mlp_ratio",
    "hidden_size": "out_hidden_size",
    "in_chans": "in_channels",
    "in_channels": "in_channels",
    "patch_size": "patch_size",
    "spatial_patch_size": "patch_size",
    "temporal_patch_size": "temporal_patch_size",
    "spatial_merge_size": "spatial_merge_size",
    "hidden_act": "hidden_act",
}
_VISION_REQUIRED = ("depth", "embed_dim", "num_heads", "hidden_size")
_VISION_IGNORED = frozenset({"model_type", "initializer_range", "rope_parameters", "rope_theta",
                             "_attn_implementation", "torch_dtype", "dtype"})


def _check_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"config: {name} must be a positive integer, got {value!r}")


def _text_from_hf(d: dict[str, Any]) -> TextConfig:
    unknown, kwargs = [], {}
    rope = d.pop("rope_scaling", None) or d.pop("rope_parameters", None) or {}
    d.pop("rope_parameters", None)
    for key, value in d.items():
        if key in _TEXT_KEYS:
            kwargs[_TEXT_KEYS[key]] = value
        elif key not in _HF_IGNORED_KEYS:
            unknown.append(key)
    if unknown:
        raise ValueError(f"config: unknown text config field(s) {sorted(unknown)}")
    if "rope_theta" not in kwargs and "rope_theta" in rope:
        kwargs["rope_theta"] = rope["rope_theta"]  # v5 rope_parameters carries the theta
    missing = [k for k in _TEXT_REQUIRED if k not in kwargs]
    if missing:
        raise ValueError(f"config: missing required text config field(s) {missing}")
    if "mrope_section" not in rope:
        raise ValueError(
            "config: rope_scaling/rope_parameters must give mrope_section "
            "(Qwen2-VL uses multimodal RoPE; e.g. [16, 24, 24])"
        )
    kwargs["mrope_section"] = tuple(int(s) for s in rope["mrope_section"])
    kwargs.setdefault("num_key_value_heads", kwargs["num_attention_heads"])
    # The released checkpoints do not state these in the text part of config.json; the value of
    # the released models (not transformers' class default) applies.
    kwargs.setdefault("tie_word_embeddings", False)
    cfg = TextConfig(**kwargs)
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads"):
        _check_int(name, getattr(cfg, name))
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
    unknown, kwargs = [], {}
    for key, value in d.items():
        if key in _VISION_KEYS:
            kwargs[_VISION_KEYS[key]] = value
        elif key not in _VISION_IGNORED:
            unknown.append(key)
    if unknown:
        raise ValueError(f"config: unknown vision_config field(s) {sorted(unknown)}")
    missing = [k for k in _VISION_REQUIRED if _VISION_KEYS[k] not in kwargs]
    if missing:
        raise ValueError(f"config: missing required vision_config field(s) {missing}")
    cfg = VisionConfig(**kwargs)
    if cfg.embed_dim % cfg.num_heads:
        raise ValueError(f"config: vision embed_dim {cfg.embed_dim} is not divisible by num_heads "
                         f"{cfg.num_heads}")
    if cfg.hidden_act != "quick_gelu":
        raise ValueError(f"config: vision hidden_act {cfg.hidden_act!r} is not supported "
                         "(Qwen2-VL uses quick_gelu)")
    return cfg


# ---------------------------------------------------------------------- presets (spec §1)

def _preset(text: TextConfig, eos: int | tuple[int, ...] = 151645) -> ModelConfig:
    return ModelConfig(
        vision=VisionConfig(out_hidden_size=text.hidden_size), text=text, eos_token_id=eos
    )


PRESETS: dict[str, ModelConfig] = {
    "2b": _preset(TextConfig()),
    "7b": _preset(TextConfig(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False,
    )),
    "72b": _preset(TextConfig(
        vocab_size=152064, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False,
        max_window_layers=80,
    )),
    # Small enough for CPU unit tests, large enough to exercise GQA, M-RoPE sections, the 2x2
    # merge and several layers.
    "tiny": ModelConfig(
        vision=VisionConfig(depth=2, embed_dim=64, num_heads=4, out_hidden_size=64),
        text=TextConfig(
            vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            rope_theta=10000.0, mrope_section=(4, 2, 2), tie_word_embeddings=True,
            sliding_window=512, max_window_layers=2,
        ),
        image_token_id=151, video_token_id=152, vision_start_token_id=150,
        vision_end_token_id=153, vision_token_id=154, bos_token_id=0, eos_token_id=1,
        pad_token_id=2,
    ),
}


def get_preset(name: str, **runtime: Any) -> ModelConfig:
    """A released-model config by name (``2b``, ``7b``, ``72b``) or ``tiny`` for tests."""
    try:
        cfg = PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return cfg.replace(**runtime) if runtime else cfg
