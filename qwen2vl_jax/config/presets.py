"""The released architectures (the hub ``config.json`` values of Qwen2-VL-2B/7B/72B-Instruct)
and ``tiny`` for tests.

These are the hub values, not transformers' class defaults: ``Qwen2VLTextConfig()`` defaults
to the 72B sizes with ``rms_norm_eps=1e-5`` and no ``rope_scaling``, and the vision default
``hidden_size`` is 7B's, so a config built from class defaults describes no released model.
"""

from __future__ import annotations

from qwen2vl_jax.config.architecture import ModelConfig, TextConfig, VisionConfig


def _released(text: TextConfig, eos: int | tuple[int, ...] = 151645) -> ModelConfig:
    return ModelConfig(vision=VisionConfig(out_hidden_size=text.hidden_size), text=text, eos_token_id=eos)


PRESETS: dict[str, ModelConfig] = {
    "2b": _released(TextConfig()),
    "7b": _released(TextConfig(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False,
    )),
    "72b": _released(TextConfig(
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


def get_preset(name: str) -> ModelConfig:
    """A released architecture by name (``2b``, ``7b``, ``72b``) or ``tiny`` for tests."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
