"""qwen2vl_jax: Qwen2-VL (2B / 7B / 72B) in JAX + Flax NNX, numerically exact to the reference."""

from qwen2vl_jax.config import ModelConfig, TextConfig, VisionConfig, get_preset
from qwen2vl_jax.hf import Qwen2VLForConditionalGeneration, Qwen2VLOutput
from qwen2vl_jax.model import Qwen2VL, count_params

__all__ = [
    "ModelConfig", "TextConfig", "VisionConfig", "get_preset", "Qwen2VL", "count_params",
    "Qwen2VLForConditionalGeneration", "Qwen2VLOutput",
]
