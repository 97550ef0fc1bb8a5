"""Model level: the ViT and the decoder give the xla outputs with impl="block_sparse" (interpret)."""

import jax
import numpy as np
from flax import nnx

from qwen2vl_jax.config import RuntimeConfig, get_preset
from qwen2vl_jax.layout import prepare_model_inputs
from qwen2vl_jax.model import Qwen2VL


def _batch(cfg):
    """Two left-padded rows: two images in row 0 (two vision segments), a 3-slice video in row 1
    (three more): a packed patch stream of 5 segments and text rows with padding segments."""
    rng = np.random.default_rng(0)
    grids = [(1, 4, 6), (1, 2, 2)]
    ids0 = [5]
    for t, h, w in grids:
        ids0 += [cfg.vision_start_token_id] + [cfg.image_token_id] * (t * h * w // 4) + [cfg.vision_end_token_id]
    ids0 += [6, 7, 8]
    ids1 = [7, cfg.vision_start_token_id] + [cfg.video_token_id] * 6 + [cfg.vision_end_token_id, 8]
    s = max(len(ids0), len(ids1))
    input_ids, mask = np.zeros((2, s), np.int64), np.zeros((2, s), np.int64)
    for r, ids in enumerate((ids0, ids1)):
        input_ids[r, s - len(ids):], mask[r, s - len(ids):] = ids, 1
    pix = rng.standard_normal((28, 1176)).astype(np.float32)
    vpix = rng.standard_normal((24, 1176)).astype(np.float32)
    batch = prepare_model_inputs(cfg, input_ids, mask, pix, np.array(grids), vpix, [[3, 2, 4]])
    return {k: v for k, v in batch.items() if k != "rope_deltas"}


def test_vit_and_decoder_match_xla_with_block_sparse():
    xla = RuntimeConfig(vision_attention_impl="xla", text_attention_impl="xla")
    bs = RuntimeConfig(vision_attention_impl="block_sparse", text_attention_impl="block_sparse")
    reference = Qwen2VL(get_preset("tiny"), xla, rngs=nnx.Rngs(0))
    ours = Qwen2VL(get_preset("tiny"), bs, rngs=nnx.Rngs(1))
    nnx.update(ours, nnx.state(reference, nnx.Param))  # identical weights
    batch = _batch(get_preset("tiny"))

    def run(model):
        out = jax.jit(lambda b: model(b, collect=True))(batch)
        return np.asarray(out["inputs_embeds"]), np.asarray(out["logits"])

    (emb_ref, logits_ref), (emb, logits) = run(reference), run(ours)
    # inputs_embeds carry the ViT + merger output at the image/video slots.
    assert np.abs(emb - emb_ref).max() <= 1e-5
    assert np.abs(logits - logits_ref).max() <= 1e-4
    assert np.abs(emb_ref).max() > 0.1  # the comparison is not of zeros
