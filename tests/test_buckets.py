"""Fixed-shape buckets: padding never changes a real token, and sizes in one bucket share one
compiled program (counted with qwen2vl_jax.perf.compile_count)."""

import numpy as np
import pytest

from qwen2vl_jax import Qwen2VLForConditionalGeneration, get_preset
from qwen2vl_jax.config import BucketConfig, RuntimeConfig
from qwen2vl_jax.layout import bucket_model_inputs, choose_bucket, prepare_model_inputs
from qwen2vl_jax.perf.compile_count import CompileCounter

CFG = get_preset("tiny")


@pytest.fixture(scope="module")
def model():
    return Qwen2VLForConditionalGeneration(CFG, seed=0)


def _image_prompt(rng, grids, text=(5, 6)):
    ids = [text[0]]
    for t, h, w in grids:
        ids += [CFG.vision_start_token_id] + [CFG.image_token_id] * (t * h * w // 4) + [CFG.vision_end_token_id]
    ids += list(text[1:])
    n = sum(t * h * w for t, h, w in grids)
    return np.array([ids]), rng.standard_normal((n, 1176)).astype(np.float32), np.array(grids)


def test_choose_bucket():
    assert choose_bucket(1, (256, 512), "x") == 256 and choose_bucket(257, (256, 512), "x") == 512
    with pytest.raises(ValueError, match="number of vision patches of 600 exceeds the largest configured bucket"):
        choose_bucket(600, (256, 512), "number of vision patches")


def test_default_buckets_are_the_fine_ladder_and_powers_of_two_on_request():
    b = BucketConfig()
    assert b.patch_buckets[:3] == (64, 128, 192) and b.text_buckets[:3] == (64, 128, 192)
    # Steps of 64 up to 1024, then four sizes per doubling: at most 20 % padding above 1024.
    assert b.patch_buckets[15:20] == (1024, 1280, 1536, 1792, 2048) and b.patch_buckets[-1] == 65536
    big = [x for x in b.patch_buckets if x > 1024]
    assert all(0 < (hi - lo) / hi <= 0.2 for lo, hi in zip(b.patch_buckets[15:], big))
    assert {256, 1024, 4096, 16384} <= set(b.patch_buckets)  # square images fit exactly
    p2 = BucketConfig.powers_of_two()
    assert p2.patch_buckets[:3] == (256, 512, 1024) and p2.text_buckets[:3] == (128, 256, 512)


@pytest.mark.parametrize("sizes", [dict(), dict(text_len=256, batch_size=4, num_patches=1024)])
def test_bucketed_logits_equal_unbucketed(model, sizes):
    rng = np.random.default_rng(0)
    ids, pix, grid = _image_prompt(rng, [(1, 4, 6), (1, 2, 2)])
    vids = np.array([[7, CFG.vision_start_token_id] + [CFG.video_token_id] * 6 + [CFG.vision_end_token_id, 8]])
    vpix = rng.standard_normal((24, 1176)).astype(np.float32)
    # Two rows, left padded; images in row 0, a video (3 temporal slices) in row 1.
    s = max(ids.shape[1], vids.shape[1])
    input_ids = np.zeros((2, s), np.int64)
    mask = np.zeros((2, s), np.int64)
    input_ids[0, s - ids.shape[1]:], mask[0, s - ids.shape[1]:] = ids[0], 1
    input_ids[1, s - vids.shape[1]:], mask[1, s - vids.shape[1]:] = vids[0], 1
    batch = prepare_model_inputs(CFG, input_ids, mask, pix, grid, vpix, [[3, 2, 4]])
    exact = model._forward_fn(False)(model.params, {k: v for k, v in batch.items() if k != "rope_deltas"})["logits"]
    bucketed = bucket_model_inputs(CFG, BucketConfig(), batch, **sizes)
    S = bucketed["input_ids"].shape[1]
    assert S >= s and S % 64 == 0 and bucketed["pixel_values"].shape[0] % 64 == 0  # really padded
    padded = model._forward_fn(False)(model.params, {k: v for k, v in bucketed.items() if k != "rope_deltas"})["logits"]
    real = mask.astype(bool)
    diff = np.abs(np.asarray(padded)[:2, S - s:] - np.asarray(exact))[real]
    assert diff.max() <= 1e-5
    # The facade's __call__ goes through buckets and returns the caller's shape.
    out = model(input_ids, mask, pix, grid, vpix, [[3, 2, 4]]).logits
    assert out.shape == (2, s, CFG.text.vocab_size)
    assert np.abs(out - np.asarray(exact))[real].max() <= 1e-5


def test_padding_patches_have_their_own_segment():
    rng = np.random.default_rng(1)
    ids, pix, grid = _image_prompt(rng, [(2, 2, 4)])
    batch = bucket_model_inputs(CFG, BucketConfig(), prepare_model_inputs(CFG, ids, None, pix, grid))
    seg = batch["vision_segment_ids"]
    assert seg[:16].tolist() == [0] * 8 + [1] * 8 and set(seg[16:].tolist()) == {2}


def test_image_sizes_in_one_bucket_compile_once(model):
    rng = np.random.default_rng(2)
    grids = [[(1, 4, 6)], [(1, 6, 4)], [(1, 8, 8)], [(1, 2, 10), (1, 2, 2)], [(2, 4, 4)]]
    ids, pix, grid = _image_prompt(rng, grids[0])
    model(ids, pixel_values=pix, image_grid_thw=grid)  # compile the bucket (and warm up helpers)
    model.generate(ids, pixel_values=pix, image_grid_thw=grid, max_new_tokens=4)
    with CompileCounter() as compiles:
        for g in grids[1:]:
            ids, pix, grid = _image_prompt(rng, g)
            model(ids, pixel_values=pix, image_grid_thw=grid)
            model.generate(ids, pixel_values=pix, image_grid_thw=grid, max_new_tokens=4)
    assert compiles.backend_compiles == 0


def test_compile_counter_sees_a_new_bucket(model):
    # The counter must be able to fail: a prompt in a bigger text bucket is a new program.
    with CompileCounter() as compiles:
        model(np.full((1, 300), 7))
    assert compiles.backend_compiles > 0 and compiles.backend_s > 0


def test_too_large_for_every_bucket_is_a_clear_error():
    runtime = RuntimeConfig(buckets=BucketConfig(patch_buckets=(256,), text_buckets=(128,)))
    m = Qwen2VLForConditionalGeneration(CFG, runtime=runtime, seed=0)
    with pytest.raises(ValueError, match="text length of 200 exceeds the largest configured bucket"):
        m(np.full((1, 200), 7))
    ids, pix, grid = _image_prompt(np.random.default_rng(3), [(1, 20, 20)])
    with pytest.raises(ValueError, match="number of vision patches of 400 exceeds"):
        m(ids, pixel_values=pix, image_grid_thw=grid)
