"""Chat template, tokenizer, placeholder expansion and the combined processor vs transformers."""

from __future__ import annotations

import numpy as np
import pytest

from qwen2vl_jax.processing import (
    IGNORE_INDEX,
    QWEN2VL_CHAT_TEMPLATE,
    Qwen2VLProcessor,
    Qwen2VLTokenizer,
    apply_chat_template,
)

CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": "Describe this image."},
            ],
        }
    ],
    [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": "a.png"},
                {"image_url": "http://x"},
                {"type": "video"},
                {"video": "v.mp4"},
                {"type": "text", "text": "Compare."},
                {"type": "unknown"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "They differ."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "And this?"}]},
    ],
    [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "system", "content": "late system"},
        {"role": "user", "content": []},
    ],
]


def test_spec_example_text():
    messages = CONVERSATIONS[2]
    assert apply_chat_template(messages, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parity
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("generation_prompt", [False, True])
@pytest.mark.parametrize("vision_id", [False, True])
def test_chat_template_matches_transformers(
    conversation, generation_prompt, vision_id, checkpoint_dir, hf_chat_template
):
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.Qwen2TokenizerFast.from_pretrained(checkpoint_dir)
    messages = CONVERSATIONS[conversation]
    ref = hf_tok.apply_chat_template(
        messages,
        chat_template=hf_chat_template,
        tokenize=False,
        add_generation_prompt=generation_prompt,
        add_vision_id=vision_id,
    )
    assert apply_chat_template(messages, generation_prompt, vision_id) == ref


def test_shipped_jinja_template_is_the_reference(hf_chat_template):
    assert QWEN2VL_CHAT_TEMPLATE == hf_chat_template


def test_tokenizer_special_ids_come_from_file(checkpoint_dir):
    tok = Qwen2VLTokenizer.from_pretrained(checkpoint_dir)
    backend = tok.backend
    # Tiny vocabulary: ids differ from the real 151643.. ones, so nothing is hard-coded.
    assert tok.pad_token_id == backend.token_to_id("<|endoftext|>") != 151643
    assert tok.eos_token_id == backend.token_to_id("<|im_end|>")
    assert tok.image_token_id == backend.token_to_id("<|image_pad|>")
    assert tok.video_token_id == backend.token_to_id("<|video_pad|>")
    assert tok.vision_start_token_id == backend.token_to_id("<|vision_start|>")
    ids = tok.encode("<|im_start|>user\nHi<|image_pad|>")
    assert ids[0] == backend.token_to_id("<|im_start|>") and ids[-1] == tok.image_token_id  # no BOS
    batch = tok(["a", "a b c"], padding=True, return_tensors="np")
    assert batch["input_ids"][0, 0] == tok.pad_token_id and batch["attention_mask"][0, 0] == 0
    assert batch["attention_mask"][1].all()


@pytest.mark.parity
def test_tokenizer_ids_match_transformers(checkpoint_dir):
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.Qwen2TokenizerFast.from_pretrained(checkpoint_dir)
    ours = Qwen2VLTokenizer.from_pretrained(checkpoint_dir)
    for text in [
        "You are a helpful assistant.",
        "  spaces\n\nnew lines 123 ümlaut 中文",
        apply_chat_template(CONVERSATIONS[3], True),
    ]:
        assert ours.encode(text) == hf_tok(text)["input_ids"]
        assert ours.decode(ours.encode(text)) == hf_tok.decode(hf_tok(text)["input_ids"])


def _hf_processor(checkpoint_dir):
    """transformers' Qwen2VLProcessor without its torchvision video processor (not installable):
    built with __new__, it still runs the real __call__ for text + images."""
    transformers = pytest.importorskip("transformers")
    tok = transformers.Qwen2TokenizerFast.from_pretrained(checkpoint_dir)
    proc = object.__new__(transformers.Qwen2VLProcessor)
    proc.image_processor = transformers.Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056)
    proc.tokenizer = tok
    proc.image_token, proc.video_token = "<|image_pad|>", "<|video_pad|>"
    proc.image_token_id = tok.convert_tokens_to_ids(proc.image_token)
    proc.video_token_id = tok.convert_tokens_to_ids(proc.video_token)
    proc.chat_template = None
    return proc


@pytest.mark.parity
def test_processor_matches_transformers(checkpoint_dir, make_image):
    ours = Qwen2VLProcessor.from_pretrained(checkpoint_dir)
    ref_proc = _hf_processor(checkpoint_dir)
    images = [make_image(70, 98, "RGB", 1), make_image(120, 60, "RGBA", 2), make_image(200, 300, "P", 3)]
    texts = [
        apply_chat_template(
            CONVERSATIONS[3][:1], add_generation_prompt=True
        ),  # 2 images (+2 videos, dropped below)
        apply_chat_template(CONVERSATIONS[2], add_generation_prompt=True),
        "no image here",
    ]
    texts[0] = texts[0].replace("<|vision_start|><|video_pad|><|vision_end|>", "")
    out = ours(text=texts, images=images, padding=True, return_tensors="np")
    ref = ref_proc(text=texts, images=images, padding=True, return_tensors="np")
    for key in ["input_ids", "attention_mask", "image_grid_thw"]:
        np.testing.assert_array_equal(out[key], ref[key])
    assert np.max(np.abs(out["pixel_values"] - ref["pixel_values"])) <= 1e-5
    # Expansion counts: t*h*w/4 copies per image, counted across the whole batch.
    per_text = (out["input_ids"] == ours.image_token_id).sum(axis=1)
    grids = out["image_grid_thw"].prod(axis=1) // 4
    np.testing.assert_array_equal(per_text, [grids[0] + grids[1], grids[2], 0])
    assert out["input_ids"].dtype == np.int64 and out["attention_mask"][2, 0] == 0  # left padded


def test_processor_with_videos_expands_video_pads(checkpoint_dir, make_pixels):
    proc = Qwen2VLProcessor.from_pretrained(checkpoint_dir)
    video = np.stack([make_pixels(56, 84, i) for i in range(3)])
    prompt = apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What?"}]}], True
    )
    out = proc(text=prompt, videos=[video])
    np.testing.assert_array_equal(out["video_grid_thw"], [[2, 4, 6]])
    assert (out["input_ids"] == proc.video_token_id).sum() == 2 * 4 * 6 // 4
    assert out["pixel_values_videos"].shape == (48, 1176)


def test_save_and_reload_processor(tmp_path, checkpoint_dir, make_image):
    proc = Qwen2VLProcessor.from_pretrained(checkpoint_dir, max_pixels=28 * 28 * 64)
    proc.save_pretrained(tmp_path)
    again = Qwen2VLProcessor.from_pretrained(tmp_path)
    assert again.image_processor.to_dict() == proc.image_processor.to_dict()
    assert again.video_processor.to_dict() == proc.video_processor.to_dict()
    image = make_image(300, 400, "RGB", 0)
    a = proc(text="<|image_pad|>", images=[image])
    b = again(text="<|image_pad|>", images=[image])
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])


def test_training_labels_cover_assistant_turns_only(checkpoint_dir, make_image):
    proc = Qwen2VLProcessor.from_pretrained(checkpoint_dir, max_pixels=28 * 28 * 16)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A dog.", "train": False},
        {"role": "user", "content": "Which breed?"},
        {"role": "assistant", "content": [{"type": "text", "text": "A Labrador."}]},
    ]
    out = proc.tokenize_for_training(messages, images=[make_image(100, 100, "RGB", 0)])
    ids, labels = out["input_ids"], out["labels"]
    assert ids.shape == labels.shape == out["attention_mask"].shape
    trained = labels != IGNORE_INDEX
    np.testing.assert_array_equal(labels[trained], ids[trained])
    # Exactly the last answer and its <|im_end|>; the opted-out answer, the prompts, the vision
    # tokens and the "<|im_start|>assistant\n" header stay at -100.
    assert proc.decode(ids[trained]) == "A Labrador.<|im_end|>"
    assert (ids == proc.image_token_id).sum() == out["image_grid_thw"].prod() // 4
    full = proc.decode(ids)
    assert full == apply_chat_template(messages).replace(
        "<|image_pad|>", "<|image_pad|>" * int(out["image_grid_thw"].prod() // 4)
    )
    # Same ids as the inference processor on the rendered conversation.
    ref = proc(text=apply_chat_template(messages), images=[make_image(100, 100, "RGB", 0)])
    np.testing.assert_array_equal(ref["input_ids"][0], ids)
    messages[1]["train"] = True
    both = proc.tokenize_for_training(messages, images=[make_image(100, 100, "RGB", 0)])
    assert proc.decode(both["input_ids"][both["labels"] != IGNORE_INDEX]) == (
        "A dog.<|im_end|>A Labrador.<|im_end|>"
    )


def test_processing_does_not_import_jax_or_torch():
    """The processing package must stay numpy + PIL + tokenizers (PyAV lazily)."""
    import ast
    import pathlib

    from qwen2vl_jax import processing

    for path in pathlib.Path(processing.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in {
                    "jax",
                    "jaxlib",
                    "torch",
                    "torchvision",
                    "transformers",
                    "flax",
                }, (
                    path,
                    name,
                )
                if name.split(".")[0] == "av":
                    assert node.col_offset > 0, f"{path}: PyAV must be imported lazily"
