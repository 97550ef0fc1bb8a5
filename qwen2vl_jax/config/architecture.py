"""The architecture: what a checkpoint's ``config.json`` says (sizes, token ids), nothing else.

How to *run* a model (dtypes, attention kernels, remat, buckets, mesh) is the separate
``RuntimeConfig`` (runtime.py): one architecture runs under many runtimes, and only the
architecture is saved with the weights.

Every field here is a ``config.json`` field under its own name (hf_json.py maps them with a
short alias table for the few names transformers spells differently), so a new architecture
switch is one new field with its default: it is read, validated by its module, written and
round-tripped without touching the I/O code.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

# Field metadata marking a value transformers hard-codes instead of reading it from config.json:
# never written there, and a value found there is ignored.
NOT_IN_CONFIG_JSON = {"config_json": False}

POSITION_ENCODINGS = ("mrope", "rope_1d", "none")


def _check_choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"config: {name} {value!r} is not one of {', '.join(valid)}")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """ViT + merger (transformers ``Qwen2VLVisionConfig``). Identical for all released sizes
    except ``out_hidden_size``."""

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
    # Hard-coded in transformers 4.x (VisionRotaryEmbedding(theta=10000), LayerNorm(eps=1e-6)).
    rope_theta: float = dataclasses.field(default=10000.0, metadata=NOT_IN_CONFIG_JSON)
    layer_norm_eps: float = dataclasses.field(default=1e-6, metadata=NOT_IN_CONFIG_JSON)

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
    """Qwen2 decoder (transformers ``Qwen2VLTextConfig``, with the released models' values)."""

    vocab_size: int = 151936
    hidden_size: int = 1536
    intermediate_size: int = 8960
    num_hidden_layers: int = 28
    num_attention_heads: int = 12
    num_key_value_heads: int = 2
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)  # config.json: rope_scaling.mrope_section
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    hidden_act: str = "silu"
    attention_dropout: float = 0.0
    use_sliding_window: bool = False
    sliding_window: int | None = 32768
    max_window_layers: int = 28
    # Ablation switch (docs/mrope.md): "mrope" (Qwen2-VL), "rope_1d" (every token, vision
    # included, at position 0, 1, 2, ... along its row, the same id on the three streams) or
    # "none" (no rotary in attention, as Jamba's attention layers).
    position_encoding: str = "mrope"

    def __post_init__(self):
        _check_choice("text.position_encoding", self.position_encoding, POSITION_ENCODINGS)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The whole architecture (transformers ``Qwen2VLConfig``): the two towers and the token ids.

    Hashable and immutable; ``replace`` returns a modified copy. ``from_hf_dict`` /
    ``from_json_file`` read the three ``config.json`` layouts found in the wild (flat hub form,
    nested ``text_config``, v5 ``rope_parameters``); ``to_hf_dict`` writes the flat hub form.
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

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """``eos_token_id`` as a tuple (it may be one id, several or none)."""
        eos = self.eos_token_id
        return () if eos is None else tuple(eos) if isinstance(eos, tuple) else (int(eos),)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a ``config.json`` dict; ``ValueError`` names every unknown, missing or
        inconsistent field (transformers' class defaults are never substituted for a missing
        architecture field: they describe no released model)."""
        from qwen2vl_jax.config.hf_json import config_from_hf_dict

        return config_from_hf_dict(d)

    def to_hf_dict(self, dtype: str = "float32") -> dict[str, Any]:
        """The flat hub ``config.json`` form (loads in transformers 4.45 ... 5.x); ``dtype`` is
        the stored weights' dtype (``torch_dtype``)."""
        from qwen2vl_jax.config.hf_json import config_to_hf_dict

        return config_to_hf_dict(self, dtype)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> ModelConfig:
        from qwen2vl_jax.config.hf_json import config_from_json_file

        return config_from_json_file(path)
