"""Our next-token loss equals transformers' ``model(..., labels=...).loss``."""

import numpy as np
import torch

from qwen2vl_jax import Qwen2VLForConditionalGeneration
from qwen2vl_jax.testing.hf_oracle import build_hf_model, case_inputs, hf_forward
from qwen2vl_jax.train.loss import next_token_loss_sum


def test_loss_matches_transformers(tmp_path):
    hf = build_hf_model(seed=6, tie=False)
    hf.save_pretrained(tmp_path)
    ours = Qwen2VLForConditionalGeneration.from_pretrained(tmp_path)
    inputs = case_inputs("left_padded_batch_of_2")
    labels = np.where(inputs["attention_mask"] == 1, inputs["input_ids"], -100)
    labels[:, :5] = -100
    with torch.no_grad():
        ref = hf_forward(hf, {**inputs, "labels": labels}).loss.item()
    total, aux = next_token_loss_sum(ours(**inputs).logits, labels)
    assert abs(float(total) / int(aux["tokens"]) - ref) <= 1e-5
