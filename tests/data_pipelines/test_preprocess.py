"""RecordPreprocessor: over-long samples (skip / truncate with whole vision spans) and labels with a
checkpoint's own chat template."""

from __future__ import annotations

import io
import json

import numpy as np
import PIL.Image
import pytest

from data_pipelines.preprocess import RecordPreprocessor, vision_spans
from qwen2vl_jax.layout.packing import IGNORE_INDEX
from qwen2vl_jax.processing import Qwen2VLProcessor
from qwen2vl_jax.testing.tiny_checkpoint import HUB_PREPROCESSOR_CONFIG, build_tiny_tokenizer

# 56x56 px -> a 4x4 patch grid -> 4 image tokens (+ vision_start / vision_end: a 6-token span).
IMAGE_TOKENS = 4

NO_SYSTEM_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                      "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
                      "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
                      "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in c %}{{ c['text'] }}{% endif %}"
                      "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
                      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _processor(directory, template=None):
    build_tiny_tokenizer(directory, chat_template=template)
    (directory / "preprocessor_config.json").write_text(json.dumps({**HUB_PREPROCESSOR_CONFIG, "max_pixels": 56 * 56}))
    return Qwen2VLProcessor.from_pretrained(directory)


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    return _processor(tmp_path_factory.mktemp("proc"))


def _png(color):
    buf = io.BytesIO()
    PIL.Image.new("RGB", (56, 56), color).save(buf, format="PNG")
    return buf.getvalue()


def _record(question_words=2, answer_words=2, images=1):
    content = [{"type": "image"}] * images + [{"type": "text", "text": "word " * question_words + "?"}]
    return {"messages": [{"role": "user", "content": content},
                         {"role": "assistant", "content": "yes " * answer_words}],
            "images": [_png((40 * k % 255, 90, 160)) for k in range(images)]}


def _spans_whole(sample, tok) -> bool:
    ids = sample.input_ids
    mask = vision_spans(ids, tok.vision_start_token_id, tok.vision_end_token_id)
    pads = (ids == tok.image_token_id).sum()
    return mask is not None and pads == sample.image_grid_thw.prod(axis=1).sum() // 4


def test_skip_is_the_default_and_counts_the_reason(processor):
    full = RecordPreprocessor(processor, max_tokens=4096, max_patches=4096)(_record(answer_words=50))
    n = full["sample"].num_tokens
    out = RecordPreprocessor(processor, max_tokens=n - 10, max_patches=4096)(_record(answer_words=50))
    assert out == {"error": f"too long: {n} tokens > the text budget {n - 10}"}


def test_truncate_cuts_the_text_tail_and_keeps_every_vision_span(processor):
    tok = processor.tokenizer
    record = _record(question_words=3, answer_words=60, images=2)
    full = RecordPreprocessor(processor, max_tokens=4096, max_patches=4096)(record)["sample"]
    budget = full.num_tokens - 25
    out = RecordPreprocessor(processor, max_tokens=budget, max_patches=4096, overlong="truncate")(record)
    sample = out["sample"]
    assert out["truncated"] and sample.num_tokens == budget
    # The kept tokens are the full sample's first `budget` tokens (both images sit before the cut).
    np.testing.assert_array_equal(sample.input_ids, full.input_ids[:budget])
    np.testing.assert_array_equal(sample.labels, full.labels[:budget])
    # Every image and all its pixel rows are kept, each span intact.
    np.testing.assert_array_equal(sample.pixel_values, full.pixel_values)
    np.testing.assert_array_equal(sample.image_grid_thw, full.image_grid_thw)
    assert _spans_whole(sample, tok) and (sample.labels != IGNORE_INDEX).any()


def test_truncate_never_cuts_into_a_vision_span(processor):
    # The image comes after the text here, so a plain prefix of the budget would cut into it:
    # the text before it is cut instead (its tail), the span stays whole.
    tok = processor.tokenizer
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "long " * 40}, {"type": "image"}]},
                           {"role": "assistant", "content": "it"}],
              "images": [_png((10, 200, 30))]}
    full = RecordPreprocessor(processor, max_tokens=4096, max_patches=4096)(record)["sample"]
    start = int(np.flatnonzero(full.input_ids == tok.vision_start_token_id)[0])
    budget = start + 3  # the cut would fall between <|vision_start|> and <|vision_end|>
    # SFT labels: the answer after the image is cut, nothing is left to learn: skipped, with the reason.
    out = RecordPreprocessor(processor, max_tokens=budget, max_patches=4096, overlong="truncate")(record)
    assert out["error"].startswith("no token to learn from after truncation")
    out = RecordPreprocessor(processor, max_tokens=budget, max_patches=4096, labels="all_text",
                             overlong="truncate")(record)
    sample = out["sample"]
    assert sample.num_tokens == budget and _spans_whole(sample, tok)
    assert (sample.input_ids == tok.image_token_id).sum() == IMAGE_TOKENS
    np.testing.assert_array_equal(sample.pixel_values, full.pixel_values)
    mask = vision_spans(sample.input_ids, tok.vision_start_token_id, tok.vision_end_token_id)
    np.testing.assert_array_equal(sample.input_ids[~mask], full.input_ids[~vision_spans(
        full.input_ids, tok.vision_start_token_id, tok.vision_end_token_id)][: budget - int(mask.sum())])


def test_truncate_still_skips_when_the_vision_spans_alone_exceed_the_budget(processor):
    record = _record(images=3)  # 3 spans of 6 tokens
    out = RecordPreprocessor(processor, max_tokens=17, max_patches=4096, overlong="truncate")(record)
    assert "vision spans alone take 18 tokens > the text budget 17" in out["error"]
    out = RecordPreprocessor(processor, max_tokens=18, max_patches=4096, overlong="truncate")(record)
    assert out["error"].startswith("no token to learn from after truncation")  # only the images fit


def test_overlong_mode_is_checked(processor):
    with pytest.raises(ValueError, match="overlong"):
        RecordPreprocessor(processor, max_tokens=10, max_patches=10, overlong="cut")


def test_vision_spans_mask():
    ids = np.array([1, 7, 5, 5, 8, 2, 7, 5, 8])
    np.testing.assert_array_equal(vision_spans(ids, 7, 8), [0, 1, 1, 1, 1, 0, 1, 1, 1])
    assert vision_spans(np.array([7, 5, 7, 8]), 7, 8) is None and vision_spans(np.array([5, 8]), 7, 8) is None


def test_checkpoint_template_labels(tmp_path):
    # A checkpoint template without a system turn: assistant labels are its assistant turns, and
    # in all_text mode the user's question is learned (no first turn is masked as "system").
    proc = _processor(tmp_path, NO_SYSTEM_TEMPLATE)
    record = {"messages": [{"role": "user", "content": "What colour ?"}, {"role": "assistant", "content": "red"}]}
    sample = RecordPreprocessor(proc, max_tokens=512, max_patches=512)(record)["sample"]
    text = proc.decode(sample.input_ids)
    assert text == "<|im_start|>user\nWhat colour ?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n"
    assert proc.decode(sample.input_ids[sample.labels != IGNORE_INDEX]) == "red<|im_end|>"
    all_text = RecordPreprocessor(proc, labels="all_text", max_tokens=512, max_patches=512)(record)["sample"]
    assert "What colour ?" in proc.decode(all_text.input_ids[all_text.labels != IGNORE_INDEX])
    # With a system turn (anywhere), its tokens are never learned.
    with_system = {"messages": [{"role": "system", "content": "Be brief."}, *record["messages"]]}
    s = RecordPreprocessor(proc, labels="all_text", max_tokens=512, max_patches=512)(with_system)["sample"]
    learned = proc.decode(s.input_ids[s.labels != IGNORE_INDEX])
    assert "Be brief" not in learned and "system" not in learned and "What colour ?" in learned
