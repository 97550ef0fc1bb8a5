"""Host-side layout: M-RoPE positions (docs/mrope.md), vision ids, scatter order (docs/numerics.md)."""

import numpy as np
import pytest

from qwen2vl_jax.config import get_preset
from qwen2vl_jax.layout import (
    check_grid,
    get_rope_index,
    prepare_model_inputs,
    vision_position_ids,
    vision_scatter_index,
    vision_segment_ids,
)

VS, VE, IMG, VID, PAD, T = 150, 153, 151, 152, 0, 7
IDS = dict(spatial_merge_size=2, image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS)


def test_spec_worked_example_with_video_longer_than_wide():
    # [pad, pad, T, T, <vs>, IMG x6 (1x4x6), <ve>, T, <vs>, VID x4 (4x2x2), <ve>, T, T]; checked
    # against transformers 4.57.6 (docs/mrope.md). The video has T'=4 > H'=W'=1 (the rule that
    # transformers >= 5.3 changed).
    ids = [PAD, PAD, T, T, VS] + [IMG] * 6 + [VE, T, VS] + [VID] * 4 + [VE, T, T]
    mask = [0, 0] + [1] * (len(ids) - 2)
    pos, delta = get_rope_index(np.array([ids]), [[1, 4, 6]], [[4, 2, 2]], np.array([mask]), **IDS)
    assert pos[0, 0].tolist() == [1, 1, 0, 1, 2, 3, 3, 3, 3, 3, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    assert pos[1, 0].tolist() == [1, 1, 0, 1, 2, 3, 3, 3, 4, 4, 4, 6, 7, 8, 9, 9, 9, 9, 13, 14, 15]
    assert pos[2, 0].tolist() == [1, 1, 0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 13, 14, 15]
    assert delta.tolist() == [[16 - 21]]


def test_text_only_positions_and_deltas():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos, delta = get_rope_index(np.zeros((2, 5), int), None, None, mask, **IDS)
    assert pos[0, 0].tolist() == [1, 1, 0, 1, 2] and pos[2, 1].tolist() == [0, 1, 2, 3, 4]
    assert delta.tolist() == [[-2], [0]]
    pos, delta = get_rope_index(np.zeros((2, 5), int), None, None, None, **IDS)
    assert pos[1, 1].tolist() == [0, 1, 2, 3, 4] and delta.tolist() == [[0], [0]]


def test_image_counters_run_across_the_batch():
    row0 = [T, VS] + [IMG] * 1 + [VE, T]  # grid 1x2x2 -> 1 token
    row1 = [T, T, VS] + [IMG] * 4 + [VE]  # grid 1x4x4 -> 4 tokens (second image of the batch)
    ids = np.array([[PAD] * 3 + row0, row1])
    mask = (np.arange(8)[None] >= np.array([[3], [0]])).astype(int)
    pos, _ = get_rope_index(ids, [[1, 2, 2], [1, 4, 4]], None, mask, **IDS)
    assert pos[:, 1, 3:7].tolist() == [[3, 3, 3, 3], [3, 3, 4, 4], [3, 4, 3, 4]]
    assert pos[:, 0, 3:].tolist() == [[0, 1, 2, 3, 4]] * 3


def test_vision_position_ids_are_in_merge_window_order():
    pos = vision_position_ids([[1, 2, 4]], 2)
    # windows (0,0),(0,1); inside each: (0,0),(0,1),(1,0),(1,1)
    assert pos.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]
    assert vision_position_ids([[3, 2, 2]], 2).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]] * 3


def test_one_segment_per_temporal_slice():
    assert vision_segment_ids([[1, 2, 2], [3, 2, 4]]).tolist() == [0] * 4 + [1] * 8 + [2] * 8 + [3] * 8


def test_scatter_index_is_batch_then_sequence_order():
    ids = np.array([[T, IMG, IMG, VID], [IMG, T, VID, VID]])
    idx = vision_scatter_index(ids, IMG, VID, num_image_tokens=3, num_video_tokens=3)
    assert idx.tolist() == [[-1, 0, 1, 3], [2, -1, 4, 5]]


def test_placeholder_count_mismatch_is_an_error():
    ids = np.array([[T, IMG, IMG]])
    with pytest.raises(ValueError, match=r"input_ids hold 2 <\|image_pad\|> tokens .* give 3 merged"):
        vision_scatter_index(ids, IMG, VID, num_image_tokens=3, num_video_tokens=0)


def test_grid_checks():
    with pytest.raises(ValueError, match="describes 16 patches .* 12 rows"):
        check_grid([[1, 4, 4]], 12, 2)
    with pytest.raises(ValueError, match=r"rows \[1\] have h or w not divisible"):
        check_grid([[1, 2, 2], [1, 3, 2]], 10, 2)
    with pytest.raises(ValueError, match=r"shape \[n, 3\]"):
        check_grid([[1, 2]], 2, 2)


def test_prepare_model_inputs_errors_name_the_input():
    cfg = get_preset("tiny")
    ids = np.array([[T, VS, IMG, VE]])
    pix = np.zeros((4, 1176), np.float32)
    with pytest.raises(ValueError, match="pixel_values was given without image_grid_thw"):
        prepare_model_inputs(cfg, ids, pixel_values=pix)
    with pytest.raises(ValueError, match=r"pixel_values must be \[num_patches, 1176\]"):
        prepare_model_inputs(cfg, ids, pixel_values=pix[:, :10], image_grid_thw=[[1, 2, 2]])
    with pytest.raises(ValueError, match="image features and image tokens do not match"):
        prepare_model_inputs(cfg, np.array([[T, VS, IMG, IMG, VE]]), pixel_values=pix, image_grid_thw=[[1, 2, 2]])
    batch = prepare_model_inputs(cfg, ids, pixel_values=pix, image_grid_thw=[[1, 2, 2]])
    assert batch["scatter_index"].tolist() == [[-1, -1, 0, -1]]
    assert batch["vision_segment_ids"].tolist() == [0, 0, 0, 0]
