"""``qwen2vl-jax demo``: the whole inference path on an embedded default, no downloads.

1. draws a synthetic picture and preprocesses it exactly like the reference processor;
2. builds a random model of the ``tiny`` preset and writes it as a HF checkpoint;
3. converts HF -> Orbax -> HF and checks that all three give bit-identical logits;
4. runs a prompt with the image through the model and prints the next-token distribution;
5. prints the exact parameter counts of the released sizes (jax.eval_shape, no memory).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _picture() -> Image.Image:
    img = Image.new("RGB", (150, 100), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([10, 10, 70, 60], fill=(220, 40, 40))
    draw.ellipse([80, 30, 140, 90], fill=(40, 90, 220))
    return img


def run(workdir: str | None = None) -> int:
    from qwen2vl_jax import Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, count_params, get_preset
    from qwen2vl_jax.convert import hf_to_orbax, orbax_to_hf

    cfg = get_preset("tiny")
    work = Path(workdir or tempfile.mkdtemp(prefix="qwen2vl_demo_"))
    print("[1/5] preprocessing a 150x100 synthetic picture")
    proc = Qwen2VLImageProcessor(max_pixels=56 * 84)
    vision = proc(images=[_picture()])
    grid = vision["image_grid_thw"]
    n_tokens = int(np.prod(grid)) // cfg.vision.spatial_merge_size**2
    print(f"      pixel_values {vision['pixel_values'].shape}, image_grid_thw {grid.tolist()}, "
          f"{n_tokens} <|image_pad|> tokens")

    print(f"[2/5] random 'tiny' model ({count_params(cfg):,} parameters) -> HF checkpoint in {work / 'hf'}")
    model = Qwen2VLForConditionalGeneration(cfg, seed=0)
    model.save_pretrained(work / "hf")

    print("[3/5] converting HF -> Orbax -> HF")
    quiet = lambda _msg: None
    hf_to_orbax(work / "hf", work / "orbax", progress=quiet)
    orbax_to_hf(work / "orbax", work / "hf_back", progress=quiet)

    ids = np.array([[5, 6, cfg.vision_start_token_id] + [cfg.image_token_id] * n_tokens
                    + [cfg.vision_end_token_id, 7, 8, 9]])
    inputs = dict(input_ids=ids, pixel_values=vision["pixel_values"], image_grid_thw=grid)
    logits = []
    for src in ("hf", "orbax", "hf_back"):
        loaded = Qwen2VLForConditionalGeneration.from_pretrained(work / src)
        t0 = time.perf_counter()
        out = loaded(**inputs)
        logits.append(np.asarray(out.logits))
        print(f"      {src:8s} forward {1e3 * (time.perf_counter() - t0):7.1f} ms (incl. compile)")
    same = all(np.array_equal(logits[0], x) for x in logits[1:])
    print(f"      logits identical across formats: {same}")

    print("[4/5] next-token distribution after the prompt (random weights, so no meaning):")
    last = logits[0][0, -1]
    probs = np.exp(last - last.max())
    probs /= probs.sum()
    for tok in np.argsort(-probs)[:5]:
        print(f"      token {int(tok):4d}  p={probs[tok]:.4f}")
    print(f"      M-RoPE positions of the image block (t, h, w):\n"
          f"      {out.position_ids[:, 0, 3:3 + n_tokens].tolist()}")

    print("[5/5] exact parameter counts (jax.eval_shape):")
    for name in ("2b", "7b", "72b"):
        print(f"      {name:>4s}: {count_params(get_preset(name)):,}")
    return 0 if same else 1
