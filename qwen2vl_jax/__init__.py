"""qwen2vl_jax: Qwen2-VL (2B / 7B / 72B) in JAX + Flax NNX, numerically exact to the reference.

The model (``Qwen2VLForConditionalGeneration``) and the input processing (``Qwen2VLProcessor``,
image / video processors, tokenizer, chat template) are importable without torch, grain or tfds.
"""

from qwen2vl_jax.config import BucketConfig, ModelConfig, RuntimeConfig, TextConfig, VisionConfig, get_preset
from qwen2vl_jax.hf import Qwen2VLForConditionalGeneration, Qwen2VLOutput
from qwen2vl_jax.model import Qwen2VL, count_params
from qwen2vl_jax.processing import (
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLTokenizer,
    Qwen2VLVideoProcessor,
    apply_chat_template,
    smart_resize,
)

__all__ = [
    "BucketConfig",
    "ModelConfig",
    "Qwen2VL",
    "Qwen2VLForConditionalGeneration",
    "Qwen2VLImageProcessor",
    "Qwen2VLOutput",
    "Qwen2VLProcessor",
    "Qwen2VLTokenizer",
    "Qwen2VLVideoProcessor",
    "RuntimeConfig",
    "TextConfig",
    "VisionConfig",
    "apply_chat_template",
    "count_params",
    "get_preset",
    "smart_resize",
]
