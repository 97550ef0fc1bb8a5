"""Forward parity with transformers==4.57.6 on random tiny models built in code (spec §7).

fp32: logits, vision tower output, merged embeddings and every decoder layer within 1e-5, and
M-RoPE position ids / rope deltas exactly equal. bf16: see test_bf16_parity for the tolerance.
"""

import numpy as np
import pytest
import torch

from qwen2vl_jax import Qwen2VLForConditionalGeneration
from qwen2vl_jax.testing.hf_oracle import CASES, HFModel, build_hf_model, case_inputs, hf_forward, max_diff

FP32_TOL = 1e-5  # the issue asks <= 1e-4 and aims at 1e-5; measured ~2e-6 (logits of magnitude ~3)


@pytest.fixture(scope="module", params=["tied", "untied"])
def models(request, tmp_path_factory):
    tie = request.param == "tied"
    hf = build_hf_model(seed=1 if tie else 2, tie=tie)
    path = tmp_path_factory.mktemp(f"hf_{request.param}")
    hf.save_pretrained(path)
    assert ("lm_head.weight" in dict(hf.named_parameters())) == (not tie) or tie
    return hf, Qwen2VLForConditionalGeneration.from_pretrained(path, dtype="float32"), path


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_parity(models, case):
    hf, ours, _ = models
    inputs = case_inputs(case)
    mask = inputs["attention_mask"].astype(bool)
    ref = hf_forward(hf, inputs, output_hidden_states=True)
    out = ours(**inputs, output_hidden_states=True)

    # Positions: exactly what transformers computes.
    ids = {k: torch.from_numpy(inputs[k]) if k in inputs else None
           for k in ("input_ids", "image_grid_thw", "video_grid_thw", "attention_mask")}
    ref_pos, ref_delta = hf.model.get_rope_index(ids["input_ids"], ids["image_grid_thw"],
                                                 ids["video_grid_thw"], ids["attention_mask"])
    np.testing.assert_array_equal(out.position_ids, ref_pos.numpy())
    np.testing.assert_array_equal(out.rope_deltas, ref_delta.numpy())

    # Merged embeddings (decoder input) and every decoder layer, at real (unpadded) positions.
    assert len(out.hidden_states) == len(ref.hidden_states) == hf.config.text_config.num_hidden_layers + 1
    for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states)):
        assert max_diff(a, b, mask) <= FP32_TOL, f"hidden state {i}"
    assert max_diff(out.logits, ref.logits, mask) <= FP32_TOL


@pytest.mark.parametrize("kind", ["image", "video"])
def test_vision_tower_parity(models, kind):
    hf, ours, _ = models
    inputs = case_inputs("left_padded_batch_of_2")
    pix = inputs["pixel_values" if kind == "image" else "pixel_values_videos"]
    grid = inputs[f"{kind}_grid_thw"]
    with torch.no_grad():
        ref = hf.model.visual(torch.from_numpy(pix), grid_thw=torch.from_numpy(grid))
    got = ours.get_vision_features(pix, grid)
    assert got.shape == tuple(ref.shape)
    assert max_diff(got, ref) <= FP32_TOL


def test_bf16_parity(models):
    """bf16 tolerance, justified against the reference itself: the transformers bf16 run (weights
    loaded with dtype=bf16, the way users run it) deviates from the exact fp32 answer by E_ref.
    Ours must be no further from the fp32 answer than 1.25 * E_ref, and within 1.25 * E_ref of
    the reference bf16 run. Measured: ours is *closer* to fp32 than the reference bf16 is."""
    hf32, _, path = models
    hf16 = HFModel.from_pretrained(path, dtype=torch.bfloat16).eval()
    ours16 = Qwen2VLForConditionalGeneration.from_pretrained(path, dtype="bfloat16")
    for case in CASES:
        inputs = case_inputs(case)
        mask = inputs["attention_mask"].astype(bool)
        exact = hf_forward(hf32, inputs).logits
        ref16 = hf_forward(hf16, inputs).logits
        got = ours16(**inputs).logits
        e_ref = max_diff(ref16, exact, mask)
        assert 0 < e_ref < 0.1, case  # the bf16 reference itself is sane
        assert max_diff(got, exact, mask) <= 1.25 * e_ref, case
        assert max_diff(got, ref16, mask) <= 1.25 * e_ref, case
        assert not np.isnan(np.asarray(got)).any()
