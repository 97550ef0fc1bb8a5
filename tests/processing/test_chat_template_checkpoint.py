"""The checkpoint's own Jinja chat template: rendered as transformers renders it, found where
transformers looks for it, and training labels on exactly its assistant spans (located in the
rendered text, or from its {% generation %} blocks as transformers' return_assistant_tokens_mask)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from qwen2vl_jax.processing import (
    IGNORE_INDEX,
    QWEN2VL_CHAT_TEMPLATE,
    Qwen2VLProcessor,
    apply_chat_template,
    tokenize_chat_for_training,
)

# Text-only and image / video content lists (as in test_chat_template_and_processor.py).
CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}],
    [
        {"role": "user", "content": [
            {"type": "image", "image": "a.png"}, {"image_url": "http://x"}, {"type": "video"}, {"video": "v.mp4"},
            {"type": "text", "text": "Compare."}, {"type": "unknown"},
        ]},
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

# Written the way hub templates are: one tag per line, relying on trim_blocks / lstrip_blocks;
# another system prompt, another role header ("<|im_start|>User:"), the eos_token variable,
# tojson, raise_exception and its own vision ids.
MODIFIED_TEMPLATE = """\
{#- A checkpoint's own template. -#}
{% set image_count = namespace(value=0) %}
{% set video_count = namespace(value=0) %}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + message['role']) }}
    {% endif %}
    {% if loop.first and message['role'] != 'system' %}
<|im_start|>system
You are a meticulous visual assistant.{{ eos_token }}
    {% endif %}
<|im_start|>{{ message['role'] | capitalize }}:{% if 'name' in message %} {{ message['name'] | tojson }}{% endif %}

    {% if message['content'] is string %}
{{ message['content'] }}{{ eos_token }}
    {% else %}
        {% for content in message['content'] %}
            {% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}
                {% set image_count.value = image_count.value + 1 %}
                {% if add_vision_id %}Image #{{ image_count.value }} {% endif %}
<|vision_start|><|image_pad|><|vision_end|>
            {%- elif content['type'] == 'video' or 'video' in content %}
                {% set video_count.value = video_count.value + 1 %}
                {% if add_vision_id %}Clip #{{ video_count.value }} {% endif %}
<|vision_start|><|video_pad|><|vision_end|>
            {%- elif 'text' in content %}
{{ content['text'] }}
            {%- endif %}
        {% endfor %}
{{ eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>Assistant:
{% endif %}
"""

# The same prompt format with the assistant output marked for return_assistant_tokens_mask.
_ASSISTANT_BODY = ("{% if message['content'] is string %}{{ message['content'] }}{% else %}"
                   "{% for c in message['content'] %}{% if 'text' in c %}{{ c['text'] }}{% endif %}{% endfor %}"
                   "{% endif %}{{ eos_token }}")
MARKED_TEMPLATE = MODIFIED_TEMPLATE.replace(
    "    {% if message['content'] is string %}\n",
    "    {% if message['role'] == 'assistant' %}\n{% generation %}" + _ASSISTANT_BODY + "{% endgeneration %}\n\n"
    "    {% elif message['content'] is string %}\n",
)

# No system turn at all (labels in all_text mode must not assume one).
NO_SYSTEM_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
                      "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
                      "{% for c in message['content'] %}{% if c['type'] == 'image' %}"
                      "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in c %}{{ c['text'] }}{% endif %}"
                      "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
                      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

TEMPLATE_NAMES = ("stock", "modified", "marked")
NAMED = [{"role": "user", "content": "Who?", "name": "Zoë <b>&"}, {"role": "assistant", "content": "Me."}]

TRAIN_CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
    {"role": "assistant", "content": "A dog."},
    {"role": "user", "content": "Which breed?"},
    {"role": "assistant", "content": [{"type": "text", "text": "A Labrador."}]},
]


def _checkpoint(directory, template: str | None, where: str = "tokenizer_config.json", base: str | None = None):
    """A copy of the processing checkpoint with ``template`` in ``where``."""
    os.makedirs(directory, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(os.path.join(base, name), os.path.join(directory, name))
    config_path = os.path.join(directory, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config.pop("chat_template", None)
    if where == "tokenizer_config.json" and template is not None:
        config["chat_template"] = template
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f)
    if where == "chat_template.json":
        with open(os.path.join(directory, where), "w", encoding="utf-8") as f:
            json.dump({"chat_template": template}, f)
    elif where == "chat_template.jinja":
        with open(os.path.join(directory, where), "w", encoding="utf-8") as f:
            f.write(template)
    return str(directory)


@pytest.fixture(scope="module")
def template_dirs(tmp_path_factory, checkpoint_dir, hf_chat_template):
    """Checkpoints whose tokenizer_config.json holds: transformers' copy of the stock template
    (the independent oracle), MODIFIED_TEMPLATE, MARKED_TEMPLATE."""
    root = tmp_path_factory.mktemp("templates")
    templates = {"stock": hf_chat_template, "modified": MODIFIED_TEMPLATE, "marked": MARKED_TEMPLATE}
    return {name: _checkpoint(root / name, t, base=checkpoint_dir) for name, t in templates.items()}


@pytest.mark.parity
@pytest.mark.parametrize("name", TEMPLATE_NAMES)
@pytest.mark.parametrize("conversation", [*range(len(CONVERSATIONS)), "named"])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_checkpoint_template_renders_as_transformers(name, conversation, generation_prompt, template_dirs):
    transformers = pytest.importorskip("transformers")
    directory = template_dirs[name]
    hf_tok = transformers.Qwen2TokenizerFast.from_pretrained(directory)
    messages = NAMED if conversation == "named" else CONVERSATIONS[conversation]
    ours = Qwen2VLProcessor.from_pretrained(directory)
    for vision_id in (False, True):
        ref = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                         add_vision_id=vision_id)
        assert ours.apply_chat_template(messages, generation_prompt, vision_id) == ref


def test_modified_template_is_not_the_builtin(template_dirs):
    messages = CONVERSATIONS[2]
    got = Qwen2VLProcessor.from_pretrained(template_dirs["modified"]).apply_chat_template(messages, True)
    assert got.startswith("<|im_start|>system\nYou are a meticulous visual assistant.<|im_end|>\n<|im_start|>User:\n")
    assert got.endswith("<|im_start|>Assistant:\n") and got != apply_chat_template(messages, True)
    with pytest.raises(ValueError, match="unknown role tool"):
        Qwen2VLProcessor.from_pretrained(template_dirs["modified"]).apply_chat_template(
            [{"role": "tool", "content": "x"}])


@pytest.mark.parametrize("where", ["tokenizer_config.json", "chat_template.json", "chat_template.jinja"])
def test_template_is_read_from_each_checkpoint_file(tmp_path, checkpoint_dir, where):
    directory = _checkpoint(tmp_path / "ckpt", MODIFIED_TEMPLATE, where, base=checkpoint_dir)
    proc = Qwen2VLProcessor.from_pretrained(directory)
    assert proc.chat_template == MODIFIED_TEMPLATE
    assert "meticulous" in proc.apply_chat_template(CONVERSATIONS[0])
    proc.save_pretrained(tmp_path / "saved")  # the template the checkpoint had is the one saved
    assert Qwen2VLProcessor.from_pretrained(tmp_path / "saved").chat_template == MODIFIED_TEMPLATE


def test_processor_template_files_win_over_the_tokenizers(tmp_path, checkpoint_dir, hf_chat_template):
    # transformers: the processor reads chat_template.json, else chat_template.jinja; the
    # tokenizer's tokenizer_config.json entry is the fallback.
    directory = _checkpoint(tmp_path / "ckpt", hf_chat_template, base=checkpoint_dir)
    with open(os.path.join(directory, "chat_template.jinja"), "w", encoding="utf-8") as f:
        f.write(NO_SYSTEM_TEMPLATE)
    assert Qwen2VLProcessor.from_pretrained(directory).chat_template == NO_SYSTEM_TEMPLATE
    with open(os.path.join(directory, "chat_template.json"), "w", encoding="utf-8") as f:
        json.dump({"chat_template": MODIFIED_TEMPLATE}, f)
    assert Qwen2VLProcessor.from_pretrained(directory).chat_template == MODIFIED_TEMPLATE
    none = _checkpoint(tmp_path / "none", None, base=checkpoint_dir)
    proc = Qwen2VLProcessor.from_pretrained(none)
    assert proc.chat_template is None  # no template anywhere: the built-in one
    assert proc.apply_chat_template(CONVERSATIONS[3], True) == apply_chat_template(CONVERSATIONS[3], True)
    proc.save_pretrained(tmp_path / "saved")
    assert Qwen2VLProcessor.from_pretrained(tmp_path / "saved").chat_template == QWEN2VL_CHAT_TEMPLATE


# ---------------------------------------------------------------------- training labels


def _trained_text(proc, messages, **kw):
    out = proc.tokenize_for_training(messages, **kw)
    trained = out["labels"] != IGNORE_INDEX
    np.testing.assert_array_equal(out["labels"][trained], out["input_ids"][trained])
    return proc.decode(out["input_ids"][trained]), out


@pytest.mark.parametrize("name", ["stock", "modified", "marked"])
def test_labels_cover_exactly_the_assistant_turns(name, template_dirs, make_image):
    proc = Qwen2VLProcessor.from_pretrained(template_dirs[name], max_pixels=28 * 28 * 16)
    image = make_image(100, 100, "RGB", 0)
    text, out = _trained_text(proc, TRAIN_CONVERSATION, images=[image])
    assert text == "A dog.<|im_end|>A Labrador.<|im_end|>"
    # The token ids are those of the inference processor on the checkpoint's rendered prompt.
    ref = proc(text=proc.apply_chat_template(TRAIN_CONVERSATION), images=[image])
    np.testing.assert_array_equal(ref["input_ids"][0], out["input_ids"])
    if name != "stock":
        assert "meticulous" in proc.decode(out["input_ids"])
    opted_out = [dict(m) for m in TRAIN_CONVERSATION]
    opted_out[1]["train"] = False
    assert _trained_text(proc, opted_out, images=[image])[0] == "A Labrador.<|im_end|>"


MASK_CONVERSATIONS = {
    "text": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}],
    "vision": CONVERSATIONS[3],
    "multi_turn": CONVERSATIONS[4][:2] + [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2 ok"}],
}


@pytest.mark.parity
@pytest.mark.parametrize("name", ["marked", "modified"])
@pytest.mark.parametrize("conversation", sorted(MASK_CONVERSATIONS))
def test_labels_match_transformers_assistant_tokens_mask(name, conversation, template_dirs):
    """transformers' return_assistant_tokens_mask on the template with {% generation %} blocks is
    the reference for both: our labels from those blocks, and those located in the rendered text
    of the same template without them."""
    transformers = pytest.importorskip("transformers")
    messages = MASK_CONVERSATIONS[conversation]
    hf_tok = transformers.Qwen2TokenizerFast.from_pretrained(template_dirs["marked"])
    ref = hf_tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    proc = Qwen2VLProcessor.from_pretrained(template_dirs[name])
    images = sum(1 for m in messages if not isinstance(m["content"], str) for c in m["content"]
                 if c.get("type") == "image" or "image" in c or "image_url" in c)
    videos = sum(1 for m in messages if not isinstance(m["content"], str) for c in m["content"]
                 if c.get("type") == "video" or "video" in c)
    # A 1x2x2 grid is one merged token: the placeholders stay as rendered, so the ids compare 1:1.
    out = tokenize_chat_for_training(
        messages, proc.tokenizer, np.tile([[1, 2, 2]], (images, 1)) if images else None,
        np.tile([[1, 2, 2]], (videos, 1)) if videos else None, chat_template=proc.chat_template,
        template_kwargs=proc.template_variables())
    np.testing.assert_array_equal(out["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(out["labels"] != IGNORE_INDEX, np.asarray(ref["assistant_masks"], bool))
    assert any(ref["assistant_masks"])


def test_unlocatable_assistant_turn_is_a_clear_error(template_dirs):
    # A header that the generation prompt does not reproduce (the message's name in it): there
    # is no {% generation %} block to fall back on, so the labels cannot be placed.
    proc = Qwen2VLProcessor.from_pretrained(template_dirs["modified"])
    named = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "name": "bot"}]
    with pytest.raises(ValueError, match="cannot locate assistant message 1.*generation"):
        proc.tokenize_for_training(named)
    marked = Qwen2VLProcessor.from_pretrained(template_dirs["marked"])
    assert _trained_text(marked, named)[0] == "A<|im_end|>"


def test_generation_spans_are_per_thread(template_dirs):
    # grain preprocesses on a thread pool and the compiled template is shared: the
    # {% generation %} tracker must keep each render's spans apart.
    from concurrent.futures import ThreadPoolExecutor

    proc = Qwen2VLProcessor.from_pretrained(template_dirs["marked"])
    conversations = [[{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "A" * (i + 1)}]
                     for i in range(16)]
    want = [_trained_text(proc, c)[0] for c in conversations]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda c: _trained_text(proc, c)[0], conversations * 8))
    assert got == want * 8
