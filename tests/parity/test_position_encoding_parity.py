"""The position-encoding switch: ``rope_1d`` is transformers' Qwen2-VL fed 1D position ids
explicitly (0, 1, 2, ... along each row's real tokens, vision included, the same id on the three
M-RoPE streams); ``none`` applies no rotary at all."""

import numpy as np
import pytest
import torch

from qwen2vl_jax import Qwen2VLForConditionalGeneration
from qwen2vl_jax.layout.rope_index import text_position_ids
from qwen2vl_jax.testing.hf_oracle import build_hf_model, case_inputs, hf_forward, max_diff


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    hf = build_hf_model(seed=5)
    path = tmp_path_factory.mktemp("hf_pos")
    hf.save_pretrained(path)
    return hf, path


@pytest.mark.parametrize("case", ["one_image", "left_padded_batch_of_2", "video"])
def test_rope_1d_equals_transformers_fed_1d_position_ids(checkpoint, case):
    hf, path = checkpoint
    ours = Qwen2VLForConditionalGeneration.from_pretrained(path, overrides={"text": {"position_encoding": "rope_1d"}})
    inputs = case_inputs(case)
    pos, _ = text_position_ids(inputs["input_ids"], inputs["attention_mask"])
    ref = hf_forward(hf, {**inputs, "position_ids": torch.from_numpy(pos)})
    out = ours(**inputs)
    mask = inputs["attention_mask"].astype(bool)
    np.testing.assert_array_equal(out.position_ids, pos)
    assert max_diff(out.logits, ref.logits, mask) <= 1e-5
    # ... and it is a real change: M-RoPE (the default) gives different logits on a vision row.
    default = Qwen2VLForConditionalGeneration.from_pretrained(path)(**inputs).logits
    assert max_diff(default, out.logits, mask) > 1e-3


def test_none_ignores_positions_and_unknown_values_list_the_valid_ones(checkpoint):
    _, path = checkpoint
    ours = Qwen2VLForConditionalGeneration.from_pretrained(path, overrides={"text": {"position_encoding": "none"}})
    from flax import nnx

    from qwen2vl_jax.layout import prepare_model_inputs

    inputs = case_inputs("one_image")
    batch = prepare_model_inputs(ours.config, inputs["input_ids"], inputs["attention_mask"],
                                 inputs["pixel_values"], inputs["image_grid_thw"])
    batch.pop("rope_deltas")
    model = nnx.merge(ours.graphdef, ours.params)
    a = np.asarray(model(batch)["logits"])
    b = np.asarray(model({**batch, "position_ids": np.random.default_rng(0).integers(0, 99, batch["position_ids"].shape)
                          .astype(np.int32)})["logits"])
    np.testing.assert_array_equal(a, b)  # positions change nothing
    with_rope = Qwen2VLForConditionalGeneration.from_pretrained(path)(**inputs).logits
    assert np.abs(with_rope - ours(**inputs).logits).max() > 1e-3
    with pytest.raises(ValueError, match="position_encoding 'alibi' is not one of mrope, rope_1d, none"):
        Qwen2VLForConditionalGeneration.from_pretrained(path, overrides={"text": {"position_encoding": "alibi"}})
