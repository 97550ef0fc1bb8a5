"""A complete tiny Qwen2-VL-Instruct-shaped checkpoint built in code (no hub): random weights of
the ``tiny`` preset sized to a small byte-level BPE tokenizer shaped like Qwen2's, with the Qwen
special tokens, tokenizer_config.json (chat template), preprocessor_config.json and
generation_config.json. Used by the CLI tests, the demo and the processing tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Special tokens in Qwen2's order (docs/preprocessing.md); their ids here are small, which checks that code
# looks ids up instead of hard-coding 151643...
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

# The Qwen2 pre-tokenizer split regex, as in the hub tokenizer.json.
QWEN_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

HUB_PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}

CORPUS = [
    "You are a helpful assistant.",
    "Describe this image. What is shown in the video?",
    "system user assistant Picture Video",
    "The dog in the picture appears to be a Labrador.",
]


def build_tiny_tokenizer(directory: str | os.PathLike, chat_template: str | None = None,
                         corpus: list[str] | None = None, vocab_size: int = 400) -> None:
    """A byte-level BPE tokenizer shaped like Qwen2's (NFC, split regex, ByteLevel, no BOS),
    trained on a few sentences (``corpus`` adds more, e.g. a task's answers so that each becomes
    one token), plus the Qwen special tokens and a tokenizer_config.json."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    from qwen2vl_jax.processing.chat_template import QWEN2VL_CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator((CORPUS + list(corpus or [])) * 5, trainer)
    tok.add_special_tokens(QWEN_SPECIAL_TOKENS)
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    config = {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "model_max_length": 32768,
        "tokenizer_class": "Qwen2Tokenizer",
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
        "chat_template": chat_template or QWEN2VL_CHAT_TEMPLATE,
    }
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)


def write_tiny_checkpoint(directory: str | os.PathLike, seed: int = 0, max_pixels: int | None = None) -> Path:
    """Tokenizer + processor configs + random ``tiny`` weights whose token ids match the
    tokenizer's special tokens. Returns the directory."""
    from tokenizers import Tokenizer

    from qwen2vl_jax.config import get_preset
    from qwen2vl_jax.hf import Qwen2VLForConditionalGeneration

    d = Path(directory)
    build_tiny_tokenizer(d)
    pre = dict(HUB_PREPROCESSOR_CONFIG)
    if max_pixels:
        pre["max_pixels"] = max_pixels
    (d / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in QWEN_SPECIAL_TOKENS}
    base = get_preset("tiny")
    cfg = base.replace(
        text=base.text.__class__(**{**base.text.__dict__, "vocab_size": tok.get_vocab_size()}),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"], bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    gen = {"eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "pad_token_id": ids["<|endoftext|>"],
           "do_sample": False}
    Qwen2VLForConditionalGeneration(cfg, seed=seed, generation_config=gen).save_pretrained(d)
    return d
