"""Qwen2-VL input processing: images, videos, tokenizer, chat template (docs/preprocessing.md).

Pure numpy + PIL + tokenizers; PyAV is imported only when a video file is given.
"""

from qwen2vl_jax.processing.chat_template import QWEN2VL_CHAT_TEMPLATE, apply_chat_template
from qwen2vl_jax.processing.image_processor import Qwen2VLImageProcessor
from qwen2vl_jax.processing.processor import Qwen2VLProcessor
from qwen2vl_jax.processing.smart_resize import smart_resize
from qwen2vl_jax.processing.tokenizer import Qwen2VLTokenizer
from qwen2vl_jax.processing.training_labels import IGNORE_INDEX, tokenize_chat_for_training
from qwen2vl_jax.processing.video_processor import Qwen2VLVideoProcessor

__all__ = [
    "IGNORE_INDEX",
    "QWEN2VL_CHAT_TEMPLATE",
    "Qwen2VLImageProcessor",
    "Qwen2VLProcessor",
    "Qwen2VLTokenizer",
    "Qwen2VLVideoProcessor",
    "apply_chat_template",
    "smart_resize",
    "tokenize_chat_for_training",
]
