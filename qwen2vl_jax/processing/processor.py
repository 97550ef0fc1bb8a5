"""`Qwen2VLProcessor`: text + images + videos -> model inputs (docs/preprocessing.md).

processor = Qwen2VLProcessor.from_pretrained("/path/to/Qwen2-VL-2B-Instruct")
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
batch = processor(text=[prompt], images=[img], padding=True, return_tensors="np")
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from qwen2vl_jax.processing.chat_template import QWEN2VL_CHAT_TEMPLATE, apply_chat_template
from qwen2vl_jax.processing.image_processor import Qwen2VLImageProcessor
from qwen2vl_jax.processing.placeholders import expand_placeholders, tokens_per_item
from qwen2vl_jax.processing.tokenizer import IMAGE_TOKEN, VIDEO_TOKEN, Qwen2VLTokenizer
from qwen2vl_jax.processing.training_labels import tokenize_chat_for_training
from qwen2vl_jax.processing.video_processor import Qwen2VLVideoProcessor

# transformers' Qwen2TokenizerFast fills unk_token with this when tokenizer_config.json has none.
_QWEN2_UNK_TOKEN = "<|endoftext|>"


def _token_text(value: Any) -> Any:
    return value.get("content") if isinstance(value, dict) else value


def _single_template(value: Any, where: str) -> str | None:
    """A chat template entry: a string, or named templates (a dict, or the list of
    {"name", "template"} that tokenizer_config.json stores) of which "default" is used."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        value = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
    if isinstance(value, dict) and isinstance(value.get("default"), str):
        return value["default"]
    raise ValueError(f"{where}: chat_template must be a string or named templates with a 'default' one")


def read_chat_template(directory: str | os.PathLike) -> str | None:
    """The processor's chat template of a checkpoint directory, where transformers 4.57.6's
    `ProcessorMixin.from_pretrained` looks: `chat_template.json` (its "chat_template" entry),
    else `chat_template.jinja`; None when neither exists (then the tokenizer's, from
    `tokenizer_config.json`, applies)."""
    directory = os.fspath(directory)
    path = os.path.join(directory, "chat_template.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                entry = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read JSON ({err})") from err
        if not isinstance(entry, dict) or "chat_template" not in entry:
            raise ValueError(f"{path}: expected an object with a 'chat_template' key")
        return _single_template(entry["chat_template"], path)
    path = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    return None


class Qwen2VLProcessor:
    """Image processor + video processor + tokenizer + chat template.

    `chat_template`: the Jinja template prompts are rendered with; None takes the tokenizer's
    (`tokenizer_config.json`), and without either the built-in Qwen2-VL-Instruct template is used.
    """

    def __init__(
        self,
        image_processor: Qwen2VLImageProcessor,
        tokenizer: Qwen2VLTokenizer,
        video_processor: Qwen2VLVideoProcessor | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.chat_template = _single_template(
            chat_template if chat_template is not None else tokenizer.chat_template, "chat_template")
        self.image_processor = image_processor
        self.video_processor = video_processor or Qwen2VLVideoProcessor(**image_processor.to_dict())
        self.tokenizer = tokenizer
        self.image_token = IMAGE_TOKEN
        self.video_token = VIDEO_TOKEN
        self.image_token_id = tokenizer.image_token_id
        self.video_token_id = tokenizer.video_token_id

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **image_overrides: Any) -> Qwen2VLProcessor:
        """Load from a checkpoint directory: `preprocessor_config.json`, optional
        `video_preprocessor_config.json`, `tokenizer.json`, optional `tokenizer_config.json`, and
        the chat template (`read_chat_template`, else the tokenizer's). Keyword arguments (e.g.
        `max_pixels=...`) override both vision processors."""
        return cls(
            Qwen2VLImageProcessor.from_pretrained(directory, **image_overrides),
            Qwen2VLTokenizer.from_pretrained(directory),
            Qwen2VLVideoProcessor.from_pretrained(directory, **image_overrides),
            chat_template=read_chat_template(directory),
        )

    def template_variables(self) -> dict[str, Any]:
        """The special tokens a Jinja chat template sees as variables, like the
        `special_tokens_map` transformers' `apply_chat_template` passes (unset ones left out)."""
        config = self.tokenizer.config
        out = {"bos_token": _token_text(config.get("bos_token")), "eos_token": self.tokenizer.eos_token,
               "unk_token": _token_text(config.get("unk_token", _QWEN2_UNK_TOKEN)),
               "sep_token": _token_text(config.get("sep_token")), "pad_token": self.tokenizer.pad_token,
               "cls_token": _token_text(config.get("cls_token")), "mask_token": _token_text(config.get("mask_token"))}
        out = {k: v for k, v in out.items() if v is not None}
        extra = config.get("additional_special_tokens")
        if extra:
            out["additional_special_tokens"] = [_token_text(t) for t in extra]
        return out

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write every config (and the Jinja chat template, so transformers can reload it)."""
        os.makedirs(directory, exist_ok=True)
        self.image_processor.save_pretrained(directory)
        self.video_processor.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        template = self.chat_template or QWEN2VL_CHAT_TEMPLATE
        with open(os.path.join(os.fspath(directory), "chat_template.json"), "w", encoding="utf-8") as f:
            json.dump({"chat_template": template}, f, indent=2, ensure_ascii=False)
            f.write("\n")

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = False,
        add_vision_id: bool = False,
        **template_kwargs: Any,
    ) -> str:
        """Prompt text for one conversation, rendered with `self.chat_template` (see
        `chat_template.apply_chat_template`); `template_kwargs` are extra template variables."""
        if self.chat_template is None:
            return apply_chat_template(messages, add_generation_prompt, add_vision_id)
        return apply_chat_template(messages, add_generation_prompt, add_vision_id, self.chat_template,
                                   **{**self.template_variables(), **template_kwargs})

    def tokenize_for_training(
        self,
        messages: Sequence[Mapping[str, Any]],
        images: Any = None,
        videos: Any = None,
        add_vision_id: bool = False,
    ) -> dict[str, np.ndarray]:
        """One training example: input_ids, labels (assistant turns only, -100 elsewhere),
        attention_mask, plus pixel_values / image_grid_thw / pixel_values_videos /
        video_grid_thw when images / videos are given."""
        vision = self._vision_inputs(images, videos)
        out = tokenize_chat_for_training(
            messages,
            self.tokenizer,
            vision.get("image_grid_thw"),
            vision.get("video_grid_thw"),
            self.image_processor.merge_size,
            add_vision_id,
            chat_template=self.chat_template,
            template_kwargs=self.template_variables() if self.chat_template is not None else None,
        )
        out.update(vision)
        return out

    def _vision_inputs(self, images: Any, videos: Any) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if images is not None:
            out.update(self.image_processor(images))
        if videos is not None:
            out.update(self.video_processor(videos))
        return out

    def __call__(
        self,
        text: str | Sequence[str],
        images: Any = None,
        videos: Any = None,
        padding: bool = False,
        return_tensors: str | None = "np",
    ) -> dict[str, Any]:
        """Tokenize `text` with every `<|image_pad|>` / `<|video_pad|>` expanded.

        Args:
            text: one prompt or a batch (already chat-templated).
            images: images in the order their placeholders appear across the whole batch
                (flat list, or one list per prompt).
            videos: videos in placeholder order (paths, frame lists or 4-D arrays).
            padding: pad to the longest prompt, on the LEFT, with `<|endoftext|>`.

        Returns:
            input_ids, attention_mask: int64[B, L]; pixel_values float32[N, 1176] and
            image_grid_thw int64[n_images, 3] with images; pixel_values_videos and
            video_grid_thw with videos.

        Raises:
            ValueError: placeholders and images/videos do not match one to one, or bad input.
        """
        if text is None:
            raise ValueError("text is required (use apply_chat_template to build it)")
        texts = [text] if isinstance(text, str) else list(text)
        vision = self._vision_inputs(images, videos)
        merge = self.image_processor.merge_size
        image_counts = tokens_per_item(vision.get("image_grid_thw"), merge)
        video_counts = tokens_per_item(vision.get("video_grid_thw"), self.video_processor.merge_size)
        texts = expand_placeholders(texts, self.image_token, image_counts, "image")
        texts = expand_placeholders(texts, self.video_token, video_counts, "video")
        encoded = self.tokenizer(texts, padding=padding, return_tensors=return_tensors)
        return {**encoded, **vision}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of token ids."""
        return self.tokenizer.decode(ids, skip_special_tokens)

    def batch_decode(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        """Texts of a batch of token ids."""
        return self.tokenizer.batch_decode(batch, skip_special_tokens)
