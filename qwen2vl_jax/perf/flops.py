"""Model FLOPs of Qwen2-VL, for MFU (the accelerator peaks are in ``qwen2vl_jax.perf.devices``).

Conventions: a multiply-add is 2 FLOPs; every ``*_flops*`` function below counts the **forward
pass only**; :func:`train_flops` turns forward FLOPs into training FLOPs (3x forward for trained
components). Biases, norms, activations, rotary embeddings and softmax are not counted (each is
< 0.1% of a linear layer's FLOPs). The attention quadratic term **is included**:

Vision tower, for an image / video with N = t*h*w patches and segment length S = h*w (ViT
attention is block-diagonal per temporal slice), E = embed_dim, M = mlp_dim, P = 1176:

* patch embed ``2*P*E`` per patch (3.01 MFLOP);
* blocks, linear part ``2*(3E^2 + E^2 + 2*E*M)`` = ``24*E^2`` per patch per block (M = 4E);
  x 32 blocks = 1.258 GFLOP per patch, 1.2613 GFLOP with the patch embed;
* blocks, attention scores + values ``4*S*E`` per patch per block (non-causal, within the slice);
* merger ``2*(4E)^2 + 2*4E*D`` per merged token (N/4 of them): 0.068 / 0.089 / 0.136 GFLOP
  (2B / 7B / 72B).

Text decoder per token (D = hidden, H = heads, KV = kv heads, d = head_dim, I = intermediate,
L = layers, V = vocab):

* linear ``2*L*(2*D*H*d + 2*D*KV*d + 3*D*I)`` = 2.620 / 13.051 / 140.43 GFLOP (2B / 7B / 72B).
  The k and v projections hold ``D*KV*d`` weights each, so ``2*D*KV*d`` inside the brackets
  (writing ``2*2*D*KV*d`` would count them twice and give 2.664 / 13.256 / 143.11);
* lm_head ``2*D*V`` = 0.467 / 1.090 / 2.491 GFLOP, counted even when tied (2B);
* attention ``4*L*(H*d)*c`` for a token attending to c keys; a causal sequence (or packed
  segment) of length s costs ``2*L*(H*d)*s^2`` in total (half of the dense s^2 term).

MFU accounting: training FLOPs = 3 x forward for each trained component. A frozen component
whose *input* still needs a gradient (it sits downstream of a trained one: the LLM in stage 1,
or a frozen merger under a trained ViT) is counted 2x (forward + activation backward, no weight
gradients). A frozen component with nothing trained upstream (the ViT in stage 3) is counted
once. Model FLOPs count real tokens and patches only: pass unpadded counts so padding shows up
as lost MFU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from qwen2vl_jax.config import ModelConfig, TextConfig, VisionConfig


def _vision(cfg: ModelConfig | VisionConfig) -> VisionConfig:
    return cfg.vision if isinstance(cfg, ModelConfig) else cfg


def _text(cfg: ModelConfig | TextConfig) -> TextConfig:
    return cfg.text if isinstance(cfg, ModelConfig) else cfg


# ---------------------------------------------------------------------------------- vision tower

def vision_patch_embed_flops(cfg: ModelConfig | VisionConfig) -> int:
    """Forward FLOPs of the patch embedding per patch: ``2*1176*E`` (3,010,560 for E=1280)."""
    v = _vision(cfg)
    return 2 * v.patch_dim * v.embed_dim


def vision_block_linear_flops(cfg: ModelConfig | VisionConfig) -> int:
    """Forward FLOPs of one ViT block's linear layers per patch: qkv 6E^2 + proj 2E^2 + fc1 2EM
    + fc2 2EM (= ``24*E^2`` for mlp_ratio 4: 39,321,600 for E=1280)."""
    v = _vision(cfg)
    e, m = v.embed_dim, v.mlp_dim
    return 2 * (3 * e * e + e * e + 2 * e * m)


def vision_flops_per_patch(cfg: ModelConfig | VisionConfig, segment_len: int = 0) -> int:
    """Forward FLOPs of the ViT (patch embed + all blocks, no merger) for one patch.

    ``segment_len`` is the length S of the attention segment the patch belongs to (h*w of its
    image or video frame pair); with the default 0 the attention term ``depth*4*S*E`` is left
    out and the result is the per-patch linear cost (1.2613 GFLOP for the released ViT).
    """
    v = _vision(cfg)
    linear = vision_patch_embed_flops(v) + v.depth * vision_block_linear_flops(v)
    return linear + v.depth * 4 * int(segment_len) * v.embed_dim


def merger_flops_per_token(cfg: ModelConfig | VisionConfig) -> int:
    """Forward FLOPs of the patch merger per merged (LLM) token: ``2*(4E)^2 + 2*4E*D``."""
    v = _vision(cfg)
    return 2 * v.merge_dim * v.merge_dim + 2 * v.merge_dim * v.out_hidden_size


def vision_attention_flops(cfg: ModelConfig | VisionConfig, segment_lengths: Sequence[int] | int) -> int:
    """Forward FLOPs of ViT attention (scores + values, all blocks): ``depth*4*E*sum(S_i^2)``."""
    v = _vision(cfg)
    lengths = [int(segment_lengths)] if isinstance(segment_lengths, int) else [int(s) for s in segment_lengths]
    return v.depth * 4 * v.embed_dim * sum(s * s for s in lengths)


def vision_flops_per_image(cfg: ModelConfig | VisionConfig, grid_thw: Sequence[int],
                           *, include_merger: bool = True) -> int:
    """Forward FLOPs of the vision tower for one image / video of patch grid (t, h, w).

    N = t*h*w patches, t segments of S = h*w patches each. Example: a 4096-patch image
    (grid 1 x 64 x 64) costs ~5.17 TF linear + 2.75 TF attention + ~0.07 TF merger ~= 8.0 TFLOP.
    """
    v = _vision(cfg)
    t, h, w = (int(x) for x in grid_thw)
    n = t * h * w
    flops = n * vision_flops_per_patch(v) + vision_attention_flops(v, [h * w] * t)
    if include_merger:
        flops += (n // v.spatial_merge_size**2) * merger_flops_per_token(v)
    return flops


# ---------------------------------------------------------------------------------- text decoder

def llm_linear_flops_per_token(cfg: ModelConfig | TextConfig) -> int:
    """``2*L*(2*D*H*d + 2*D*KV*d + 3*D*I)``: q/o, k/v and the SwiGLU MLP of every layer."""
    t = _text(cfg)
    d_model, d = t.hidden_size, t.head_dim
    h, kv = t.num_attention_heads, t.num_key_value_heads
    per_layer = 2 * d_model * h * d + 2 * d_model * kv * d + 3 * d_model * t.intermediate_size
    return 2 * t.num_hidden_layers * per_layer


def lm_head_flops_per_token(cfg: ModelConfig | TextConfig) -> int:
    """``2*D*V`` (counted even when the lm_head is tied to the embeddings)."""
    t = _text(cfg)
    return 2 * t.hidden_size * t.vocab_size


def llm_attention_flops_per_key(cfg: ModelConfig | TextConfig) -> int:
    """``4*L*(H*d)``: attention FLOPs of one query token per key it attends to."""
    t = _text(cfg)
    return 4 * t.num_hidden_layers * t.num_attention_heads * t.head_dim


def llm_flops_per_token(cfg: ModelConfig | TextConfig, context_len: int = 0) -> int:
    """Forward FLOPs of the decoder for one token attending to ``context_len`` keys:
    linear + lm_head + ``4*L*(H*d)*c`` (2.620 + 0.467 GFLOP + 172,032*c FLOP for 2B)."""
    return (llm_linear_flops_per_token(cfg) + lm_head_flops_per_token(cfg)
            + llm_attention_flops_per_key(cfg) * int(context_len))


def llm_causal_attention_flops(cfg: ModelConfig | TextConfig, segment_lengths: Sequence[int] | int) -> int:
    """Forward attention FLOPs of causal sequences / packed segments: ``2*L*(H*d)*sum(s_i^2)``."""
    lengths = [int(segment_lengths)] if isinstance(segment_lengths, int) else [int(s) for s in segment_lengths]
    return llm_attention_flops_per_key(cfg) // 2 * sum(s * s for s in lengths)


# ---------------------------------------------------------------------------------- training

@dataclasses.dataclass(frozen=True)
class FlopBreakdown:
    """Forward FLOPs of one batch by component (``vit`` = patch embed + blocks)."""

    vit: int = 0
    merger: int = 0
    llm: int = 0

    @property
    def total(self) -> int:
        return self.vit + self.merger + self.llm


def _segments(total: int, seq_len: int | Sequence[int] | None, what: str) -> list[int]:
    if total <= 0:
        return []
    if seq_len is None:
        raise ValueError(f"{what}: give the sequence / segment length(s) so attention can be counted")
    if isinstance(seq_len, int):
        if seq_len <= 0:
            raise ValueError(f"{what}: sequence length must be positive, got {seq_len}")
        full, rest = divmod(total, seq_len)
        return [seq_len] * full + ([rest] if rest else [])
    lengths = [int(s) for s in seq_len if int(s) > 0]
    if sum(lengths) != total:
        raise ValueError(f"{what}: segment lengths sum to {sum(lengths)}, expected {total}")
    return lengths


def forward_flops(cfg: ModelConfig, text_tokens: int, vision_patches: int = 0, *,
                  seq_len: int | Sequence[int] | None,
                  vision_segment_len: int | Sequence[int] | None = None) -> FlopBreakdown:
    """Forward FLOPs of a batch.

    ``text_tokens``: real LLM tokens (vision placeholder tokens included, padding excluded).
    ``seq_len``: the causal attention spans: an int (the tokens form sequences of this length,
    the last one possibly shorter) or the list of sequence / packed-segment lengths (summing to
    ``text_tokens``). ``vision_patches``: real ViT patches. ``vision_segment_len``: the ViT
    attention segments (h*w per image / frame pair): an int or a list summing to the patches.
    """
    text_segs = _segments(int(text_tokens), seq_len, "text")
    vis_segs = _segments(int(vision_patches), vision_segment_len, "vision")
    n_tok, n_patch = sum(text_segs), sum(vis_segs)
    m2 = cfg.vision.spatial_merge_size ** 2
    return FlopBreakdown(
        vit=n_patch * vision_flops_per_patch(cfg) + vision_attention_flops(cfg, vis_segs),
        merger=(n_patch // m2) * merger_flops_per_token(cfg),
        llm=n_tok * (llm_linear_flops_per_token(cfg) + lm_head_flops_per_token(cfg))
        + llm_causal_attention_flops(cfg, text_segs),
    )


def training_multipliers(*, freeze_vision: bool = False, freeze_merger: bool = False,
                         freeze_llm: bool = False) -> tuple[int, int, int]:
    """(vit, merger, llm) factors from forward to training FLOPs: 3 trained, 2 frozen with a
    trained component upstream (input gradients only), 1 frozen with nothing trained upstream."""
    out, upstream_trained = [], False
    for frozen in (freeze_vision, freeze_merger, freeze_llm):
        out.append(3 if not frozen else (2 if upstream_trained else 1))
        upstream_trained = upstream_trained or not frozen
    return tuple(out)


def train_flops(cfg: ModelConfig, text_tokens: int, vision_patches: int = 0, *,
                seq_len: int | Sequence[int] | None,
                vision_segment_len: int | Sequence[int] | None = None,
                freeze_vision: bool = False, freeze_merger: bool = False, freeze_llm: bool = False,
                freeze: Any = None) -> float:
    """Model FLOPs of one training step on a batch (forward + backward), for MFU.

    Arguments as :func:`forward_flops`; ``freeze`` may be a ``FreezeConfig`` (its fields
    override the three flags). With gradient accumulation pass the totals over all microbatches.
    Example, 2B, one 4096-token sequence, no images, all trained:
    ``3 * (4096 * (2.620 + 0.467) GFLOP + 2*28*1536*4096^2)`` = 3 * 14.09 TFLOP.
    """
    if freeze is not None:
        freeze_vision, freeze_merger, freeze_llm = freeze.freeze_vision, freeze.freeze_merger, freeze.freeze_llm
    fwd = forward_flops(cfg, text_tokens, vision_patches, seq_len=seq_len, vision_segment_len=vision_segment_len)
    mv, mm, ml = training_multipliers(freeze_vision=freeze_vision, freeze_merger=freeze_merger,
                                      freeze_llm=freeze_llm)
    return float(mv * fwd.vit + mm * fwd.merger + ml * fwd.llm)


def batch_segment_lengths(cfg: ModelConfig, batch: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Real text segment lengths and ViT segment lengths of a (host, numpy) model-input batch.

    Works on ``packing.pack`` / ``layout.prepare_model_inputs`` batches, with or without leading
    (microbatch) axes. Text: runs of equal non-zero ``segment_ids`` per row. Vision: the real
    patches are the first ``(#scatter_index >= 0) * merge^2`` of each patch stream (padding comes
    last); their segments are the runs of ``vision_segment_ids``.
    """
    import numpy as np

    seg = np.asarray(batch["segment_ids"])
    rows = seg.reshape(-1, seg.shape[-1])
    text: list[int] = []
    for row in rows:
        _, counts = np.unique(row[row != 0], return_counts=True)
        text.extend(int(c) for c in counts)
    vision: list[int] = []
    if "vision_segment_ids" in batch and "scatter_index" in batch:
        vseg = np.asarray(batch["vision_segment_ids"])
        streams = vseg.reshape(-1, vseg.shape[-1])
        scatter = np.asarray(batch["scatter_index"]).reshape(streams.shape[0], -1)
        m2 = cfg.vision.spatial_merge_size ** 2
        for stream, sc in zip(streams, scatter):
            used = int((sc >= 0).sum()) * m2
            _, counts = np.unique(stream[:used], return_counts=True)
            vision.extend(int(c) for c in counts)
    return text, vision


def train_flops_from_batch(cfg: ModelConfig, batch: dict[str, Any], *, freeze: Any = None,
                           freeze_vision: bool = False, freeze_merger: bool = False,
                           freeze_llm: bool = False) -> float:
    """:func:`train_flops` of a host batch, counting its real tokens / patches and segments."""
    text, vision = batch_segment_lengths(cfg, batch)
    return train_flops(cfg, sum(text), sum(vision), seq_len=text, vision_segment_len=vision,
                       freeze=freeze, freeze_vision=freeze_vision, freeze_merger=freeze_merger,
                       freeze_llm=freeze_llm)
