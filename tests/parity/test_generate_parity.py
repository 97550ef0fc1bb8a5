"""Greedy generation token-for-token identical to transformers==4.57.6 generate(do_sample=False)."""

import numpy as np
import pytest
import torch

from qwen2vl_jax import Qwen2VLForConditionalGeneration
from qwen2vl_jax.testing.hf_oracle import CASES, build_hf_model, case_inputs

NEW = 16


@pytest.fixture(scope="module", params=["tied", "untied"])
def models(request, tmp_path_factory):
    tie = request.param == "tied"
    hf = build_hf_model(seed=4 if tie else 5, tie=tie)
    path = tmp_path_factory.mktemp(f"gen_{request.param}")
    hf.save_pretrained(path)
    return hf, Qwen2VLForConditionalGeneration.from_pretrained(path)


def _hf_generate(hf, inputs, **kw):
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        return hf.generate(**t, do_sample=False, repetition_penalty=kw.pop("repetition_penalty", 1.0), **kw).numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_matches_transformers(models, case):
    hf, ours = models
    inputs = case_inputs(case)
    ref = _hf_generate(hf, inputs, max_new_tokens=NEW)
    got = ours.generate(**inputs, max_new_tokens=NEW)
    assert ref.shape == got.shape
    np.testing.assert_array_equal(got, ref)


def test_eos_min_new_tokens_and_repetition_penalty_match(models):
    hf, ours = models
    inputs = case_inputs("left_padded_batch_of_2")
    free = _hf_generate(hf, inputs, max_new_tokens=NEW, eos_token_id=None)
    s = inputs["input_ids"].shape[1]
    eos = int(free[0, s + 2])  # row 0 stops at its third new token; row 1 runs on (then pads)
    for kw in (dict(eos_token_id=eos), dict(eos_token_id=eos, min_new_tokens=5),
               dict(eos_token_id=[eos, int(free[1, s + 4])]), dict(repetition_penalty=1.3)):
        ref = _hf_generate(hf, inputs, max_new_tokens=NEW, pad_token_id=0, **dict(kw))
        got = ours.generate(**inputs, max_new_tokens=NEW, pad_token_id=0, **kw)
        assert ref.shape == got.shape, kw
        np.testing.assert_array_equal(got, ref, err_msg=str(kw))
