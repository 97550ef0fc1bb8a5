"""Packing several samples per row changes nothing for any sample (segments + per-sample M-RoPE)."""

import jax
import numpy as np
import pytest
from flax import nnx

from qwen2vl_jax import get_preset
from qwen2vl_jax.layout import prepare_model_inputs
from qwen2vl_jax.layout.packing import Sample, first_fit, pack
from qwen2vl_jax.model import Qwen2VL
from qwen2vl_jax.train.loss import next_token_loss_sum

CFG = get_preset("tiny")


def _sample(rng, images=(), videos=(), text=(3, 4)):
    c = CFG
    ids = rng.integers(5, 100, size=text[0]).tolist()
    for g in images:
        ids += [c.vision_start_token_id] + [c.image_token_id] * (int(np.prod(g)) // 4) + [c.vision_end_token_id]
    for g in videos:
        ids += [c.vision_start_token_id] + [c.video_token_id] * (int(np.prod(g)) // 4) + [c.vision_end_token_id]
    ids += rng.integers(5, 100, size=text[1]).tolist()
    ids = np.array(ids)
    labels = np.where(rng.random(len(ids)) < 0.5, ids, -100)
    labels[0] = -100
    n = sum(int(np.prod(g)) for g in (*images, *videos))
    pix = rng.standard_normal((n, 1176)).astype(np.float32) if n else None
    return Sample(ids, labels, pix, np.array(images).reshape(-1, 3) if images else None,
                  np.array(videos).reshape(-1, 3) if videos else None)


def _alone(model, s):
    n_img = int(np.prod(s.image_grid_thw, axis=1).sum()) if s.image_grid_thw is not None else 0
    pix = s.pixel_values
    batch = prepare_model_inputs(CFG, s.input_ids[None], None,
                                 pix[:n_img] if n_img else None, s.image_grid_thw,
                                 pix[n_img:] if s.video_grid_thw is not None else None, s.video_grid_thw)
    return np.asarray(model({k: v for k, v in batch.items() if k != "rope_deltas"})["logits"])[0]


def test_packed_logits_and_loss_equal_each_sample_alone():
    rng = np.random.default_rng(0)
    samples = [_sample(rng, images=[(1, 4, 6)]), _sample(rng, videos=[(3, 2, 4)], text=(2, 6)),
               _sample(rng, text=(9, 0)), _sample(rng, images=[(1, 2, 2), (1, 4, 4)], text=(1, 5))]
    plan = first_fit(samples, num_rows=2, text_budget=32, patch_budget=256)
    assert not plan.deferred and not plan.rejected
    assert plan.rows == [[0, 1], [2, 3]]  # several samples share each row
    batch = pack(CFG, samples, plan, 32, 256)
    assert 0 < float(batch["text_padding_fraction"]) < 1
    assert float(batch["patch_padding_fraction"]) == pytest.approx(1 - (24 + 24 + 4 + 16) / 256)
    model = Qwen2VL(CFG, rngs=nnx.Rngs(0))
    inputs = {k: v for k, v in batch.items() if k in
              ("input_ids", "segment_ids", "position_ids", "scatter_index", "pixel_values", "vision_pos",
               "vision_segment_ids")}
    packed = np.asarray(jax.jit(lambda b: model(b)["logits"])(inputs))
    total_alone = 0.0
    for r, members in enumerate(plan.rows):
        col = 0
        for i in members:
            s = samples[i]
            alone = _alone(model, s)
            np.testing.assert_allclose(packed[r, col:col + s.num_tokens], alone, atol=1e-5)
            loss, _ = next_token_loss_sum(alone[None], s.labels[None])
            total_alone += float(loss)
            col += s.num_tokens
    loss, _ = next_token_loss_sum(packed, batch["labels"])
    assert float(loss) == pytest.approx(total_alone, rel=1e-5)


def test_first_fit_defers_and_rejects_with_reasons():
    rng = np.random.default_rng(1)
    samples = [_sample(rng, text=(20, 0)), _sample(rng, text=(20, 0)), _sample(rng, text=(140, 0)),
               _sample(rng, images=[(1, 16, 20)]), _sample(rng, text=(70, 0)), _sample(rng, text=(15, 0))]
    plan = first_fit(samples, num_rows=1, text_budget=100, patch_budget=256)
    assert plan.rows == [[0, 1, 5]]
    assert plan.deferred == [4]  # fits the budgets, not this batch
    assert plan.rejected == [(2, "140 tokens exceed the text budget of 100"),
                             (3, "320 vision patches exceed the patch budget of 256")]


def test_placeholder_mismatch_is_named():
    rng = np.random.default_rng(2)
    s = _sample(rng, images=[(1, 4, 6)])
    s.image_grid_thw = np.array([[1, 2, 12]])  # same patch count, placeholders still 6
    s.input_ids = s.input_ids[:-1]
    s.labels = s.labels[:-1]
    s.input_ids[4] = 7  # one placeholder fewer
    with pytest.raises(ValueError, match="sample 0: 5 image / 0 video placeholders"):
        pack(CFG, [s], first_fit([s], 1, 48, 256), 48, 256)
