"""The FLOP formulas of qwen2vl_jax.perf.flops against hand computations, and MFU."""

import numpy as np
import pytest

from qwen2vl_jax import get_preset
from qwen2vl_jax.layout.packing import Sample, first_fit, pack
from qwen2vl_jax.perf import flops as F
from qwen2vl_jax.perf.devices import peak_tflops_for
from qwen2vl_jax.train.freezing import FreezeConfig
from qwen2vl_jax.train.metrics import Throughput

C2B, C7B, C72B = get_preset("2b"), get_preset("7b"), get_preset("72b")

# 2B by hand: E=1280, 32 blocks, D=1536, L=28, H=12, KV=2, d=128, I=8960, V=151936.
E = 1280
PATCH_EMBED = 2 * 1176 * E  # 3,010,560
BLOCK_LINEAR = 24 * E * E  # 39,321,600
VIT_PER_PATCH = PATCH_EMBED + 32 * BLOCK_LINEAR  # 1,261,301,760
LLM_LINEAR_2B = 2 * 28 * (2 * 1536 * 12 * 128 + 2 * 1536 * 2 * 128 + 3 * 1536 * 8960)  # 2,620,391,424
LM_HEAD_2B = 2 * 1536 * 151936  # 466,747,392
ATTN_KEY_2B = 4 * 28 * 12 * 128  # 172,032
MERGER_2B = 2 * (4 * E) ** 2 + 2 * 4 * E * 1536  # 68,157,440


def test_vision_2b_matches_hand_counts():
    assert F.vision_patch_embed_flops(C2B) == PATCH_EMBED == 3_010_560
    assert F.vision_block_linear_flops(C2B) == BLOCK_LINEAR == 39_321_600
    assert F.vision_flops_per_patch(C2B) == VIT_PER_PATCH
    assert VIT_PER_PATCH / 1e9 == pytest.approx(1.2613, abs=1e-4)  # "N * 1.2613 GFLOP" per image of N patches
    assert F.vision_flops_per_patch(C2B, segment_len=100) == VIT_PER_PATCH + 32 * 4 * 100 * E
    # Merger per merged token: 0.068 / 0.089 / 0.136 GFLOP (2B / 7B / 72B).
    assert F.merger_flops_per_token(C2B) == MERGER_2B == 68_157_440
    assert [round(F.merger_flops_per_token(c) / 1e9, 3) for c in (C2B, C7B, C72B)] == [0.068, 0.089, 0.136]


def test_vision_image_example():
    # A 4096-patch image (1024 LLM tokens): ~5.17 TF linear + 2.75 TF attention + ~0.07 TF merger.
    n = 4096
    want = n * VIT_PER_PATCH + 32 * 4 * n * n * E + (n // 4) * MERGER_2B
    got = F.vision_flops_per_image(C2B, (1, 64, 64))
    assert got == want
    assert got / 1e12 == pytest.approx(8.0, abs=0.05)
    assert F.vision_attention_flops(C2B, 4096) / 1e12 == pytest.approx(2.75, abs=0.005)
    # Video: attention is per temporal slice (t segments of h*w), not over all t*h*w patches.
    vid = F.vision_flops_per_image(C2B, (3, 8, 12), include_merger=False)
    assert vid == 3 * 96 * VIT_PER_PATCH + 3 * 32 * 4 * 96 * 96 * E


def test_llm_per_token_matches_hand_counts():
    assert F.llm_linear_flops_per_token(C2B) == LLM_LINEAR_2B == 2_620_391_424
    assert F.lm_head_flops_per_token(C2B) == LM_HEAD_2B
    assert F.llm_attention_flops_per_key(C2B) == ATTN_KEY_2B == 172_032
    assert F.llm_flops_per_token(C2B, context_len=10) == LLM_LINEAR_2B + LM_HEAD_2B + 10 * ATTN_KEY_2B
    # The published figures for all three sizes (linear, lm_head, attention per key).
    lin = [round(F.llm_linear_flops_per_token(c) / 1e9, 3) for c in (C2B, C7B)]
    assert lin == [2.620, 13.051]
    assert F.llm_linear_flops_per_token(C72B) / 1e9 == pytest.approx(140.43, abs=0.005)
    assert [round(F.lm_head_flops_per_token(c) / 1e9, 3) for c in (C2B, C7B, C72B)] == [0.467, 1.090, 2.491]
    assert [F.llm_attention_flops_per_key(c) for c in (C7B, C72B)] == [401_408, 2_621_440]
    # Causal sequence of length s: 2*L*(H*d)*s^2 in total.
    assert F.llm_causal_attention_flops(C2B, [4096, 10]) == ATTN_KEY_2B // 2 * (4096**2 + 100)


def test_train_flops_stages():
    # One 1000-token row packed from segments 600 + 400, 4096 patches in one image, 2B.
    text, patches = [600, 400], 4096
    vit = patches * VIT_PER_PATCH + 32 * 4 * patches * patches * E
    merger = (patches // 4) * MERGER_2B
    llm = 1000 * (LLM_LINEAR_2B + LM_HEAD_2B) + ATTN_KEY_2B // 2 * (600**2 + 400**2)
    fwd = F.forward_flops(C2B, 1000, patches, seq_len=text, vision_segment_len=4096)
    assert (fwd.vit, fwd.merger, fwd.llm) == (vit, merger, llm)

    def tf(**freeze):
        return F.train_flops(C2B, 1000, patches, seq_len=text, vision_segment_len=[4096], **freeze)

    assert tf() == 3 * (vit + merger + llm)  # stage 2: everything trained
    assert tf(freeze_llm=True) == 3 * vit + 3 * merger + 2 * llm  # stage 1: LLM needs input grads
    assert tf(freeze_vision=True) == vit + 3 * merger + 3 * llm  # stage 3: ViT counted once
    assert tf(freeze=FreezeConfig(freeze_vision=True)) == tf(freeze_vision=True)
    assert tf(freeze_vision=True, freeze_merger=True, freeze_llm=True) == vit + merger + llm
    # An int seq_len splits the tokens into full sequences and a remainder.
    assert F.forward_flops(C2B, 1000, seq_len=600).llm == llm
    with pytest.raises(ValueError, match="sum to"):
        F.train_flops(C2B, 1000, seq_len=[10, 20])
    with pytest.raises(ValueError, match="segment length"):
        F.train_flops(C2B, 10, 16, seq_len=10)


def test_train_flops_from_packed_batch():
    cfg = get_preset("tiny")
    rng = np.random.default_rng(0)
    c = cfg

    def sample(n_text, grid):
        n_merged = int(np.prod(grid)) // 4 if grid is not None else 0
        ids = [5] * n_text + ([c.vision_start_token_id] + [c.image_token_id] * n_merged + [c.vision_end_token_id]
                              if grid is not None else [])
        pix = None if grid is None else rng.standard_normal((int(np.prod(grid)), 1176)).astype(np.float32)
        return Sample(np.array(ids), np.array(ids), pix, None if grid is None else np.array([grid]))

    samples = [sample(5, (1, 4, 4)), sample(7, None), sample(3, (1, 2, 6))]  # 11, 7, 8 tokens
    plan = first_fit(samples, num_rows=2, text_budget=20, patch_budget=64)
    batch = pack(cfg, samples, plan, 20, 64)
    text, vision = F.batch_segment_lengths(cfg, batch)
    assert sorted(text) == [7, 8, 11] and vision == [16, 12]
    # A leading microbatch axis gives the same segments twice.
    stacked = {k: np.stack([v, v]) for k, v in batch.items() if k in ("segment_ids", "vision_segment_ids",
                                                                      "scatter_index")}
    assert sorted(F.batch_segment_lengths(cfg, stacked)[0]) == [7, 7, 8, 8, 11, 11]
    got = F.train_flops_from_batch(cfg, batch, freeze=FreezeConfig(freeze_vision=True))
    assert got == F.train_flops(cfg, 26, 28, seq_len=text, vision_segment_len=vision, freeze_vision=True)


def test_throughput_mfu():
    r = Throughput.rates(tokens=8000, patches=4000, seconds=2.0, flops=4e15, n_devices=4, peak_tflops=1000.0)
    assert r["tokens_per_s"] == 4000 and r["tokens_per_s_per_device"] == 1000 and r["patches_per_s"] == 2000
    assert r["tflops_per_device"] == pytest.approx(500.0) and r["mfu"] == pytest.approx(0.5)
    assert "mfu" not in Throughput.rates(tokens=1, seconds=1, flops=1e12)  # no peak, no MFU
    t = Throughput(n_devices=2, peak_tflops=100.0)
    t.add(100, flops=1e14)
    t.add(300, flops=1e14)
    w = t.window(seconds=2.0)
    assert w["tokens_per_s"] == 200 and w["step_time_s"] == 1.0 and w["mfu"] == pytest.approx(0.5)
    assert t.window(seconds=1.0) == {}  # nothing added since


def test_mfu_uses_the_device_table():
    # One TPU v5e (197 dense bf16 TFLOP/s) doing 98.5 TFLOP in a second runs at 50% MFU.
    t = Throughput(n_devices=1, peak_tflops=peak_tflops_for("TPU v5 lite"))
    t.add(1000, flops=98.5e12)
    assert t.window(seconds=1.0)["mfu"] == pytest.approx(0.5)
    t = Throughput(n_devices=1, peak_tflops=peak_tflops_for("cpu"))  # unknown: no MFU
    t.add(1000, flops=1e12)
    assert "mfu" not in t.window(seconds=1.0)
