"""Configuration: the architecture (``ModelConfig``: what ``config.json`` holds) and the
runtime (``RuntimeConfig``: how to run it), plus the released presets."""

from qwen2vl_jax.config.architecture import ModelConfig, TextConfig, VisionConfig
from qwen2vl_jax.config.presets import PRESETS, get_preset
from qwen2vl_jax.config.runtime import BucketConfig, RuntimeConfig, canonical_dtype

__all__ = [
           "PRESETS",
           "BucketConfig",
           "ModelConfig",
           "RuntimeConfig",
           "TextConfig",
           "VisionConfig",
           "canonical_dtype",
           "get_preset",
]
