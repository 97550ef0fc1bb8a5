"""Config presets (the hub config.json values) and HF config.json parsing in all its on-disk forms."""

import json

import pytest

from qwen2vl_jax.config import ModelConfig, get_preset

# The released 2B-Instruct config.json as on the hub: flat text fields + nested vision_config.
HUB_2B = {
    "architectures": ["Qwen2VLForConditionalGeneration"], "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
    "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
    "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 1536, "initializer_range": 0.02,
    "intermediate_size": 8960, "max_position_embeddings": 32768, "max_window_layers": 28,
    "model_type": "qwen2_vl", "num_attention_heads": 12, "num_hidden_layers": 28,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2", "use_cache": True, "use_sliding_window": False,
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                      "hidden_size": 1536, "patch_size": 14, "spatial_merge_size": 2,
                      "spatial_patch_size": 14, "temporal_patch_size": 2},
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 151936,
}


def _nested(flat: dict) -> dict:
    """The transformers >= 4.52 layout: text fields under text_config."""
    top_keys = {"image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                "model_type", "architectures", "vision_config", "transformers_version"}
    text = {k: v for k, v in flat.items() if k not in top_keys}
    out = {k: v for k, v in flat.items() if k in top_keys}
    out["text_config"] = text
    return out


def test_presets_match_spec_section_1():
    c2, c7, c72 = get_preset("2b"), get_preset("7b"), get_preset("72b")
    assert (c2.text.hidden_size, c2.text.intermediate_size, c2.text.num_hidden_layers) == (1536, 8960, 28)
    assert (c2.text.num_attention_heads, c2.text.num_key_value_heads, c2.text.vocab_size) == (12, 2, 151936)
    assert c2.text.tie_word_embeddings and not c7.text.tie_word_embeddings and not c72.text.tie_word_embeddings
    assert (c7.text.hidden_size, c7.text.num_attention_heads, c7.text.num_key_value_heads) == (3584, 28, 4)
    assert (c72.text.hidden_size, c72.text.num_hidden_layers, c72.text.intermediate_size) == (8192, 80, 29568)
    assert c7.text.vocab_size == c72.text.vocab_size == 152064
    for c in (c2, c7, c72):
        assert c.text.mrope_section == (16, 24, 24)
        assert c.text.rms_norm_eps == 1e-6 and c.text.rope_theta == 1e6 and c.text.head_dim == 128
        assert c.vision.out_hidden_size == c.text.hidden_size
        assert (c.vision.depth, c.vision.embed_dim, c.vision.num_heads, c.vision.patch_dim) == (32, 1280, 16, 1176)
        assert c.vision.layer_norm_eps == 1e-6


def test_flat_hub_config_equals_preset():
    assert ModelConfig.from_hf_dict(HUB_2B) == get_preset("2b")


def test_nested_form_equals_flat_form():
    assert ModelConfig.from_hf_dict(_nested(HUB_2B)) == ModelConfig.from_hf_dict(HUB_2B)


def test_v5_rope_parameters_and_in_channels():
    d = _nested(HUB_2B)
    text = d["text_config"]
    text.pop("rope_scaling")
    theta = text.pop("rope_theta")
    text["rope_parameters"] = {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": theta}
    vision = dict(d["vision_config"])
    vision["in_channels"] = vision.pop("in_chans")
    vision["model_type"] = "qwen2_vl_vision"
    d["vision_config"] = vision
    assert ModelConfig.from_hf_dict(d) == get_preset("2b")


def test_hf_class_defaults_are_never_used():
    # A config.json without rms_norm_eps would make transformers use its class default 1e-5
    # (docs/numerics.md, config class defaults); we refuse instead of guessing.
    d = dict(HUB_2B)
    d.pop("rms_norm_eps")
    with pytest.raises(ValueError, match="rms_norm_eps"):
        ModelConfig.from_hf_dict(d)
    d = dict(HUB_2B)
    d.pop("rope_scaling")
    with pytest.raises(ValueError, match="mrope_section"):
        ModelConfig.from_hf_dict(d)


def test_unknown_fields_are_errors():
    with pytest.raises(ValueError, match=r"unknown text config field\(s\) \['hiden_size'\]"):
        ModelConfig.from_hf_dict({**HUB_2B, "hiden_size": 3})
    bad_vision = {**HUB_2B, "vision_config": {**HUB_2B["vision_config"], "windows": 4}}
    with pytest.raises(ValueError, match=r"unknown vision_config field\(s\) \['windows'\]"):
        ModelConfig.from_hf_dict(bad_vision)


def test_inconsistent_config_is_an_error():
    with pytest.raises(ValueError, match="mrope_section"):
        ModelConfig.from_hf_dict({**HUB_2B, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 25]}})
    with pytest.raises(ValueError, match="merger output"):
        ModelConfig.from_hf_dict({**HUB_2B, "vision_config": {**HUB_2B["vision_config"], "hidden_size": 3584}})


@pytest.mark.parametrize("preset", ["2b", "7b", "72b", "tiny"])
def test_to_hf_dict_round_trip(preset):
    cfg = get_preset(preset)
    d = json.loads(json.dumps(cfg.to_hf_dict()))
    assert ModelConfig.from_hf_dict(d) == cfg


# --------------------------------------------------------------- fields this port does not implement


def test_sliding_window_is_rejected_not_ignored():
    with pytest.raises(ValueError, match="use_sliding_window.*not implemented"):
        ModelConfig.from_hf_dict({**HUB_2B, "use_sliding_window": True})
    nested = _nested({**HUB_2B, "use_sliding_window": True})
    with pytest.raises(ValueError, match="use_sliding_window"):
        ModelConfig.from_hf_dict(nested)
    # The released value (false, with a sliding_window size that is then unused) is fine.
    assert ModelConfig.from_hf_dict({**HUB_2B, "use_sliding_window": False}) == get_preset("2b")


@pytest.mark.parametrize("rope", [
    {"type": "linear", "factor": 2.0, "mrope_section": [16, 24, 24]},
    {"type": "dynamic", "factor": 4.0, "mrope_section": [16, 24, 24]},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768, "mrope_section": [16, 24, 24]},
    {"type": "linear", "factor": 2.0},  # no mrope_section either
])
def test_rope_scaling_of_another_type_is_rejected(rope):
    with pytest.raises(ValueError, match=r"rope_scaling.*(type|rope_type).*not implemented"):
        ModelConfig.from_hf_dict({**HUB_2B, "rope_scaling": rope})


def test_v5_rope_parameters_of_another_type_are_rejected():
    d = dict(HUB_2B)
    d.pop("rope_scaling")
    d["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "mrope_section": [16, 24, 24],
                            "rope_theta": 1e6}
    with pytest.raises(ValueError, match=r"rope_parameters.*linear.*not implemented"):
        ModelConfig.from_hf_dict(d)


@pytest.mark.parametrize("section", [None, "16,24,24", [16, 24], [16, 24, 24, 0], [16.5, 24, 23.5], [-8, 40, 32],
                                     [True, 24, 39]])
def test_rope_scaling_without_a_valid_mrope_section_is_rejected(section):
    rope = {"type": "default"} if section is None else {"type": "default", "mrope_section": section}
    with pytest.raises(ValueError, match="mrope_section"):
        ModelConfig.from_hf_dict({**HUB_2B, "rope_scaling": rope})


@pytest.mark.parametrize("rope", [
    {"type": "mrope", "mrope_section": [16, 24, 24]},  # the released config.json
    {"type": "default", "mrope_section": [16, 24, 24]},  # what transformers' Qwen2VLTextConfig rewrites it to
    {"rope_type": "default", "mrope_section": [16, 24, 24]},
    {"type": "default", "rope_type": "default", "mrope_section": [16, 24, 24]},  # transformers' save_pretrained
])
def test_mrope_spellings_are_accepted(rope):
    assert ModelConfig.from_hf_dict({**HUB_2B, "rope_scaling": rope}) == get_preset("2b")
