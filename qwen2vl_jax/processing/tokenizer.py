"""`Qwen2VLTokenizer`: the checkpoint's `tokenizer.json` through the `tokenizers` library.

No BOS is added (the Qwen2 tokenizer has `bos_token: null`), batches are padded on the LEFT
with `<|endoftext|>` (docs/preprocessing.md). Special-token ids are looked up in the file, never hard-coded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from tokenizers import Tokenizer

# Special-token strings (docs/preprocessing.md); their ids come from tokenizer.json.
IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
VISION_START_TOKEN = "<|vision_start|>"
VISION_END_TOKEN = "<|vision_end|>"
VISION_PAD_TOKEN = "<|vision_pad|>"
END_OF_TEXT_TOKEN = "<|endoftext|>"
DEFAULT_PAD_TOKEN = END_OF_TEXT_TOKEN
DEFAULT_EOS_TOKEN = "<|im_end|>"


def _token_content(value: Any) -> str | None:
    # tokenizer_config.json stores special tokens either as strings or AddedToken dicts.
    if isinstance(value, dict):
        return value.get("content")
    return value


class Qwen2VLTokenizer:
    """Thin wrapper over `tokenizers.Tokenizer` with the Qwen2-VL conventions.

    Args:
        tokenizer: the loaded `tokenizers.Tokenizer`.
        config: contents of `tokenizer_config.json` (may be empty): `pad_token`, `eos_token`,
            `padding_side`, `model_max_length` and `chat_template` are read from it.
    """

    def __init__(self, tokenizer: Tokenizer, config: dict[str, Any] | None = None) -> None:
        self.backend = tokenizer
        self.config = dict(config or {})
        self.pad_token = _token_content(self.config.get("pad_token")) or DEFAULT_PAD_TOKEN
        self.eos_token = _token_content(self.config.get("eos_token")) or DEFAULT_EOS_TOKEN
        self.padding_side = self.config.get("padding_side", "left")
        self.chat_template = self.config.get("chat_template")
        for key, value in (("pad_token", self.pad_token), ("eos_token", self.eos_token)):
            if not isinstance(value, str):
                raise ValueError(  # noqa: TRY004 - bad input is a ValueError by contract
                    f"tokenizer_config.json: {key} must be a string, got {value!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"tokenizer_config.json: padding_side must be 'left' or 'right', "
                             f"got {self.padding_side!r}")
        self.pad_token_id = self.require_id(self.pad_token)
        self.eos_token_id = self.require_id(self.eos_token)
        self.image_token_id = self.require_id(IMAGE_TOKEN)
        self.video_token_id = self.require_id(VIDEO_TOKEN)
        self.vision_start_token_id = self.require_id(VISION_START_TOKEN)
        self.vision_end_token_id = self.require_id(VISION_END_TOKEN)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> Qwen2VLTokenizer:
        """Load `<directory>/tokenizer.json` (+ `tokenizer_config.json` when present)."""
        directory = os.fspath(directory)
        path = os.path.join(directory, "tokenizer.json")
        if not os.path.isfile(path):
            raise ValueError(f"{path}: not found (a Qwen2-VL checkpoint directory needs tokenizer.json)")
        try:
            tokenizer = Tokenizer.from_file(path)
        except Exception as err:  # tokenizers raises a bare Exception on parse errors
            raise ValueError(f"{path}: cannot load tokenizer ({err})") from err
        config: dict[str, Any] = {}
        config_path = os.path.join(directory, "tokenizer_config.json")
        if os.path.isfile(config_path):
            try:
                with open(config_path, "rb") as f:
                    config = json.loads(f.read())
            except (ValueError, RecursionError) as err:  # JSONDecodeError / UnicodeDecodeError
                raise ValueError(f"{config_path}: not valid JSON ({err})") from err
            if not isinstance(config, dict):
                raise ValueError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
        try:
            return cls(tokenizer, config)
        except ValueError as err:
            raise ValueError(f"{directory}: {err}") from err

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `tokenizer.json` and `tokenizer_config.json` to `directory`."""
        os.makedirs(directory, exist_ok=True)
        self.backend.save(os.path.join(os.fspath(directory), "tokenizer.json"))
        config = dict(self.config)
        config.update(pad_token=self.pad_token, eos_token=self.eos_token, padding_side=self.padding_side)
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        with open(os.path.join(os.fspath(directory), "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
            f.write("\n")

    def token_to_id(self, token: str) -> int | None:
        """Id of `token`, or None if the vocabulary lacks it."""
        return self.backend.token_to_id(token)

    def require_id(self, token: str) -> int:
        """Id of `token`; ValueError if the tokenizer does not know it."""
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer has no token {token!r}; is this a Qwen2-VL tokenizer.json?")
        return token_id

    def stop_token_ids(self) -> tuple[int, ...]:
        """The ids generation stops at: the end of a turn (``eos_token``, ``<|im_end|>``) and
        ``<|endoftext|>``, as the released ``generation_config.json`` lists them."""
        ids = (self.eos_token_id, self.token_to_id(END_OF_TEXT_TOKEN))
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    def greedy_generation_config(self) -> dict[str, Any]:
        """A ``generation_config.json`` for models trained with this tokenizer: greedy, stopping
        at ``stop_token_ids``, padding with ``pad_token``."""
        return {"eos_token_id": list(self.stop_token_ids()), "pad_token_id": self.pad_token_id, "do_sample": False}

    def model_token_ids(self) -> dict[str, int]:
        """The token-id fields of ``ModelConfig`` as this tokenizer numbers them (for a model
        trained from scratch with it). ``bos_token_id`` is ``<|endoftext|>``, as in the released
        config.json (the tokenizer itself adds no BOS)."""
        return {
            "image_token_id": self.image_token_id, "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id, "vision_end_token_id": self.vision_end_token_id,
            "vision_token_id": self.require_id(VISION_PAD_TOKEN), "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id, "bos_token_id": self.require_id(END_OF_TEXT_TOKEN),
        }

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text become their single ids."""
        return self.backend.encode(text).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and their (start, end) character spans in `text`."""
        encoding = self.backend.encode(text)
        return encoding.ids, encoding.offsets

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        """`decode` over a batch (rows of a 2-D array or lists)."""
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def __call__(
        self, text: str | Sequence[str], padding: bool = False, return_tensors: str | None = None
    ) -> dict[str, Any]:
        """Tokenize a string or a batch.

        Returns:
            {"input_ids", "attention_mask"}: lists of lists, or int64[B, L] arrays when
            `return_tensors="np"` (which needs equal lengths or `padding=True`). Padding puts
            `pad_token_id` on the `padding_side` (left for Qwen2-VL) with mask 0.
        """
        texts = [text] if isinstance(text, str) else list(text)
        ids = [enc.ids for enc in self.backend.encode_batch(texts)]
        masks = [[1] * len(row) for row in ids]
        if padding:
            longest = max((len(row) for row in ids), default=0)
            for i, row in enumerate(ids):
                fill = longest - len(row)
                if self.padding_side == "left":
                    ids[i] = [self.pad_token_id] * fill + row
                    masks[i] = [0] * fill + masks[i]
                else:
                    ids[i] = row + [self.pad_token_id] * fill
                    masks[i] = masks[i] + [0] * fill
        if return_tensors is None:
            return {"input_ids": ids, "attention_mask": masks}
        if return_tensors != "np":
            raise ValueError(f"return_tensors must be 'np' or None, got {return_tensors!r}")
        if len({len(row) for row in ids}) > 1:
            raise ValueError("sequences have different lengths; pass padding=True")
        return {
            "input_ids": np.asarray(ids, dtype=np.int64).reshape(len(ids), -1),
            "attention_mask": np.asarray(masks, dtype=np.int64).reshape(len(ids), -1),
        }
