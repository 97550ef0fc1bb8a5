"""Bad checkpoints and bad inputs give a ValueError that names every offending tensor / input."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from qwen2vl_jax import Qwen2VLForConditionalGeneration, get_preset

CFG = get_preset("tiny")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    model = Qwen2VLForConditionalGeneration(CFG, seed=0)
    model.save_pretrained(path)
    return model, path


def _rewrite(src, dst, edit):
    dst.mkdir()
    tensors = edit(load_file(str(src / "model.safetensors")))
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


def test_random_model_round_trips_through_safetensors(saved):
    model, path = saved
    again = Qwen2VLForConditionalGeneration.from_pretrained(path)
    ids = np.array([[5, 6, 7, 8]])
    np.testing.assert_array_equal(np.asarray(model(ids).logits), np.asarray(again(ids).logits))


def test_missing_unexpected_and_misshaped_tensors_are_all_listed(saved, tmp_path):
    _, path = saved

    def edit(t):
        del t["model.layers.1.mlp.up_proj.weight"]
        del t["visual.merger.ln_q.bias"]
        t["model.layers.7.mlp.up_proj.weight"] = np.zeros((3, 3), np.float32)  # layer 7 of 2
        t["visual.extra.weight"] = np.zeros(3, np.float32)
        t["model.norm.weight"] = np.zeros(65, np.float32)
        return t

    bad = _rewrite(path, tmp_path / "bad", edit)
    with pytest.raises(ValueError) as err:
        Qwen2VLForConditionalGeneration.from_pretrained(bad)
    msg = str(err.value)
    assert "missing tensors (2)" in msg and "model.layers.1.mlp.up_proj.weight" in msg
    assert "visual.merger.ln_q.bias" in msg
    assert "unexpected tensors (2)" in msg and "model.layers.7.mlp.up_proj.weight" in msg
    assert "visual.extra.weight" in msg
    assert "wrongly-shaped tensors (1)" in msg and "model.norm.weight: checkpoint (65,), expected (64,)" in msg


def test_untied_checkpoint_without_lm_head_is_an_error(saved, tmp_path):
    _, path = saved
    d = _rewrite(path, tmp_path / "untied", lambda t: t)
    cfg = json.loads((d / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"missing tensors \(1\): \['lm_head.weight'\]"):
        Qwen2VLForConditionalGeneration.from_pretrained(d)


def test_unknown_config_field_names_the_file(saved, tmp_path):
    _, path = saved
    d = _rewrite(path, tmp_path / "cfg", lambda t: t)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_experts"] = 8
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config.json: config: unknown text config field\(s\) \['num_experts'\]"):
        Qwen2VLForConditionalGeneration.from_pretrained(d)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        Qwen2VLForConditionalGeneration.from_pretrained(tmp_path)


def test_bad_model_inputs(saved):
    model, _ = saved
    c = CFG
    ids = np.array([[5, c.vision_start_token_id, c.image_token_id, c.vision_end_token_id]])
    pix = np.zeros((4, 1176), np.float32)
    with pytest.raises(ValueError, match="image features and image tokens do not match: input_ids hold 1"):
        model(ids, pixel_values=np.zeros((16, 1176), np.float32), image_grid_thw=[[1, 4, 4]])
    with pytest.raises(ValueError, match="describes 8 patches .* 4 rows"):
        model(ids, pixel_values=pix, image_grid_thw=[[2, 2, 2]])
    with pytest.raises(ValueError, match="not divisible by spatial_merge_size"):
        model(ids, pixel_values=np.zeros((3, 1176), np.float32), image_grid_thw=[[1, 1, 3]])
    with pytest.raises(ValueError, match="outside"):
        model(np.array([[c.text.vocab_size]]))
