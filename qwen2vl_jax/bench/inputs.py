"""The benchmark models and inputs: HF-style configs of the CPU comparison and the batch layouts.

Everything is numpy: the same arrays feed our model and (as torch tensors) transformers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Token ids of the benchmark vocabularies (those of the parity oracle, qwen2vl_jax.testing.hf_oracle).
PAD, BOS, EOS, VISION_START, IMAGE, VIDEO, VISION_END = 0, 1, 2, 3, 4, 5, 6
FIRST_TEXT_ID = 7

# HF-style configs of the CPU comparison. "mid" is the benchmark model, "mid6" the sweep's;
# "tiny" is for tests.
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "mid": {
        "text": {"vocab_size": 32000, "hidden_size": 512, "intermediate_size": 2048,
                 "num_hidden_layers": 10, "num_attention_heads": 8, "num_key_value_heads": 2,
                 "max_position_embeddings": 4096, "rope_theta": 1_000_000.0,
                 "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]}},
        "vision": {"depth": 4, "embed_dim": 256, "num_heads": 4, "mlp_ratio": 4},
    },
    # The sweep's model (bench --sweep): a mid-size text tower and a 6-layer ViT.
    "mid6": {
        "text": {"vocab_size": 32000, "hidden_size": 512, "intermediate_size": 2048,
                 "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 2,
                 "max_position_embeddings": 32768, "rope_theta": 1_000_000.0,
                 "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]}},
        "vision": {"depth": 6, "embed_dim": 384, "num_heads": 6, "mlp_ratio": 4},
    },
    "tiny": {
        "text": {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
                 "rope_theta": 10000.0, "rope_scaling": {"type": "mrope", "mrope_section": [4, 2, 2]}},
        "vision": {"depth": 2, "embed_dim": 32, "num_heads": 4, "mlp_ratio": 4},
    },
}

# Batch layouts: rows of (text tokens before the image, image grid (t, h, w), text tokens after).
# Batch 1: 64 image tokens + 40 text tokens. Batch 8: different grids and lengths, left-padded.
ROWS_B1 = [(20, (1, 16, 16), 20)]
ROWS_B8 = [(20, (1, 16, 16), 20), (22, (1, 12, 16), 22), (18, (1, 16, 20), 18), (20, (1, 8, 12), 20),
           (19, (1, 16, 16), 19), (21, (1, 20, 12), 21), (20, (1, 12, 12), 20), (18, (1, 16, 8), 18)]
LAYOUTS = {1: ROWS_B1, 8: ROWS_B8}


def make_inputs(rng: np.random.Generator, layout: list[tuple], *, merge: int, patch_dim: int,
                text_ids: tuple[int, int], image_token_id: int, vision_start_token_id: int,
                vision_end_token_id: int, pad_token_id: int) -> dict[str, np.ndarray]:
    """Left-padded HF-style numpy inputs (the layout of hf_oracle.batch_inputs)."""
    rows, grids = [], []
    for before, grid, after in layout:
        t, h, w = grid
        ids = (rng.integers(*text_ids, size=before).tolist() + [vision_start_token_id]
               + [image_token_id] * (t * h * w // merge**2) + [vision_end_token_id]
               + rng.integers(*text_ids, size=after).tolist())
        rows.append(ids)
        grids.append(grid)
    s = max(len(r) for r in rows)
    input_ids = np.full((len(rows), s), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(rows), s), dtype=np.int64)
    for i, r in enumerate(rows):
        input_ids[i, s - len(r):] = r
        mask[i, s - len(r):] = 1
    n = int(np.prod(grids, axis=1).sum())
    return {"input_ids": input_ids, "attention_mask": mask,
            "pixel_values": rng.standard_normal((n, patch_dim)).astype(np.float32),
            "image_grid_thw": np.array(grids, dtype=np.int64)}


def bucketed(cfg, buckets, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The padded model inputs our model runs ``inputs`` at (``cfg``: the architecture,
    ``buckets``: the runtime's ``BucketConfig``)."""
    from qwen2vl_jax.layout import bucket_model_inputs, prepare_model_inputs

    batch = prepare_model_inputs(cfg, inputs["input_ids"], inputs["attention_mask"],
                                 inputs["pixel_values"], inputs["image_grid_thw"], None, None)
    return bucket_model_inputs(cfg, buckets, batch)


def bucket_shape(cfg, buckets, inputs: dict[str, np.ndarray]) -> tuple[int, int]:
    """(batch, text length) of the bucket ``inputs`` run at."""
    return tuple(bucketed(cfg, buckets, inputs)["input_ids"].shape)


def describe_inputs(cfg, buckets, inputs: dict[str, np.ndarray]) -> str:
    """Real sizes and the bucket shapes our model runs them at."""
    padded = bucketed(cfg, buckets, inputs)
    b, s = inputs["input_ids"].shape
    B, S = padded["input_ids"].shape
    n = inputs["pixel_values"].shape[0]
    P = padded["pixel_values"].shape[0]
    real_tokens = int(inputs["attention_mask"].sum())
    return (f"{b} row(s) x {s} tokens ({real_tokens} real), {n} patches -> "
            f"our buckets: batch {B} x text {S}, {P} patches")
