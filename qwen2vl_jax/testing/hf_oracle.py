"""The parity oracle: tiny random transformers==4.57.6 Qwen2-VL models built in code,
in the manner of transformers' ``Qwen2VLVisionText2TextModelTester``
(tests/models/qwen2_vl/test_modeling_qwen2_vl.py).

Nothing is downloaded: configs, weights and inputs are generated here. Shared by the parity
tests; importing it requires torch and transformers (the ``[parity]`` extra).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import Qwen2VLConfig
from transformers import Qwen2VLForConditionalGeneration as HFModel

# Token ids of the tiny vocab (small ids, as in transformers' tiny-model tester); merge size 2, so
# the 2x2 merge is exercised.
PAD, BOS, EOS, VISION_START, IMAGE, VIDEO, VISION_END = 0, 1, 2, 3, 4, 5, 6
VOCAB = 128
MERGE = 2
PATCH_DIM = 3 * 2 * 14 * 14


def tiny_hf_config(tie: bool = True, **text_overrides) -> Qwen2VLConfig:
    text = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=tie, hidden_act="silu",
        rope_scaling={"type": "mrope", "mrope_section": [4, 2, 2]},
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
    )
    text.update(text_overrides)
    vision = dict(depth=2, embed_dim=32, num_heads=4, hidden_size=text["hidden_size"], mlp_ratio=4,
                  spatial_merge_size=MERGE, patch_size=14, temporal_patch_size=2, in_channels=3)
    return Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=IMAGE, video_token_id=VIDEO,
        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
        tie_word_embeddings=tie,
    )


def build_hf_model(seed: int = 0, tie: bool = True, dtype=torch.float32, **text_overrides) -> HFModel:
    """A random model whose every weight (biases and norms included) is non-trivial."""
    torch.manual_seed(seed)
    cfg = tiny_hf_config(tie=tie, **text_overrides)
    model = HFModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".norm1.weight" in name or ".norm2.weight" in name \
                    or "ln_q.weight" in name or "layernorm.weight" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    return model.to(dtype)


def vision_block(grid: tuple[int, int, int], token: int) -> list[int]:
    t, h, w = grid
    return [VISION_START] + [token] * (t * h * w // MERGE**2) + [VISION_END]


def random_text(rng: np.random.Generator, n: int) -> list[int]:
    return rng.integers(7, VOCAB, size=n).tolist()


def make_case(rng: np.random.Generator, segments: list, pad_to: int | None = None) -> dict:
    """Build one row from a list of ('text', n) / ('image', grid) / ('video', grid) segments."""
    ids: list[int] = []
    images, videos = [], []
    for kind, arg in segments:
        if kind == "text":
            ids += random_text(rng, arg)
        elif kind == "image":
            ids += vision_block(arg, IMAGE)
            images.append(arg)
        else:
            ids += vision_block(arg, VIDEO)
            videos.append(arg)
    return {"ids": ids, "images": images, "videos": videos}


def batch_inputs(rng: np.random.Generator, rows: list[dict]) -> dict:
    """Left-pad rows into numpy HF-style inputs with random pixel values."""
    s = max(len(r["ids"]) for r in rows)
    input_ids = np.full((len(rows), s), PAD, dtype=np.int64)
    mask = np.zeros((len(rows), s), dtype=np.int64)
    for i, r in enumerate(rows):
        input_ids[i, s - len(r["ids"]):] = r["ids"]
        mask[i, s - len(r["ids"]):] = 1
    out = {"input_ids": input_ids, "attention_mask": mask}
    images = [g for r in rows for g in r["images"]]
    videos = [g for r in rows for g in r["videos"]]
    if images:
        out["image_grid_thw"] = np.array(images, dtype=np.int64)
        out["pixel_values"] = rng.standard_normal((int(np.prod(images, axis=1).sum()), PATCH_DIM)).astype(np.float32)
    if videos:
        out["video_grid_thw"] = np.array(videos, dtype=np.int64)
        out["pixel_values_videos"] = rng.standard_normal((int(np.prod(videos, axis=1).sum()), PATCH_DIM)).astype(np.float32)
    return out


def hf_forward(model: HFModel, inputs: dict, output_hidden_states: bool = False):
    dtype = next(model.parameters()).dtype
    kw = {}
    for k, v in inputs.items():
        t = torch.from_numpy(np.asarray(v))
        if k.startswith("pixel_values"):
            t = t.to(dtype)
        kw[k] = t
    with torch.no_grad():
        return model(**kw, output_hidden_states=output_hidden_states, return_dict=True)


# Parity cases: each is a batch (list of rows); rows are segment lists for make_case.
CASES: dict[str, list[list[tuple]]] = {
    "one_image": [[("text", 3), ("image", (1, 4, 6)), ("text", 5)]],
    "images_of_different_grids_in_one_row": [[("text", 2), ("image", (1, 4, 6)), ("text", 3),
                                              ("image", (1, 2, 2)), ("image", (1, 6, 4)), ("text", 2)]],
    "video": [[("text", 3), ("video", (3, 2, 4)), ("text", 4)]],
    "video_T_exceeds_H_and_W": [[("text", 2), ("video", (6, 2, 2)), ("text", 5)]],
    "text_only": [[("text", 12)]],
    "left_padded_batch_of_2": [[("text", 3), ("image", (1, 4, 4)), ("text", 2)],
                               [("text", 2), ("video", (2, 2, 4)), ("text", 3), ("image", (1, 2, 2)),
                                ("text", 1)]],
}


def case_inputs(name: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return batch_inputs(rng, [make_case(rng, row) for row in CASES[name]])


def max_diff(a, b, mask: np.ndarray | None = None) -> float:
    def host(x):
        return np.asarray(x.float().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)

    a, b = host(a), host(b)
    d = np.abs(a - b)
    return float((d[mask] if mask is not None else d).max())
