"""``qwen2vl-jax demo --inference``: the whole inference path on an embedded default, no downloads.

1. draws a synthetic picture and preprocesses it exactly like the reference processor;
2. writes a complete tiny checkpoint (random ``tiny`` weights, a Qwen-shaped tokenizer, processor
   and generation configs) in the HF layout;
3. converts HF -> Orbax -> HF and checks that all three give bit-identical logits;
4. asks a question about the picture through the chat template and generates an answer (random
   weights, so the words mean nothing), with prefill and decode timings;
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
    from qwen2vl_jax import Qwen2VLForConditionalGeneration, Qwen2VLProcessor, count_params, get_preset
    from qwen2vl_jax.checkpoint.convert import hf_to_orbax, orbax_to_hf
    from qwen2vl_jax.config import BucketConfig
    from qwen2vl_jax.testing.tiny_checkpoint import write_tiny_checkpoint

    work = Path(workdir or tempfile.mkdtemp(prefix="qwen2vl_demo_"))
    print(f"[1/5] writing a complete tiny checkpoint (random weights + tokenizer) to {work / 'hf'}")
    write_tiny_checkpoint(work / "hf", max_pixels=56 * 84)
    processor = Qwen2VLProcessor.from_pretrained(work / "hf")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[_picture()], return_tensors="np")
    print("[2/5] preprocessed a 150x100 synthetic picture: "
          f"pixel_values {inputs['pixel_values'].shape}, image_grid_thw {inputs['image_grid_thw'].tolist()}, "
          f"prompt {inputs['input_ids'].shape[1]} tokens")
    print(f"      {prompt!r}")

    print("[3/5] converting HF -> Orbax -> HF")
    quiet = lambda _msg: None
    hf_to_orbax(work / "hf", work / "orbax", progress=quiet)
    orbax_to_hf(work / "orbax", work / "hf_back", progress=quiet)
    small = {"buckets": BucketConfig(text_buckets=(128,), patch_buckets=(256,))}
    logits = []
    for src in ("hf", "orbax", "hf_back"):
        model = Qwen2VLForConditionalGeneration.from_pretrained(work / src, **small)
        logits.append(np.asarray(model(**inputs).logits))
    same = all(np.array_equal(logits[0], x) for x in logits[1:])
    print(f"      {model.num_parameters:,} parameters; logits identical across the three formats: {same}")

    print("[4/5] generating an answer (sampled, seed 0, 24 new tokens; random weights, so no meaning)")
    kw = dict(max_new_tokens=24, eos_token_id=[], do_sample=True, temperature=1.0, seed=0)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    out = model.generate(**inputs, **kw, timings=timings)
    first = time.perf_counter() - t0
    answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:].tolist(), skip_special_tokens=True)
    print(f"      answer: {answer!r}")
    again = model.generate(**inputs, **kw, timings=timings)
    rate = (timings["new_tokens"] - 1) / timings["decode_s"]
    print(f"      first call {first:.1f} s (compiles prefill + decode); compiled: prefill "
          f"{1e3 * timings['prefill_s']:.1f} ms, decode {rate:.0f} tokens/s; same seed, same answer: "
          f"{np.array_equal(out, again)}")

    print("[5/5] exact parameter counts (jax.eval_shape):")
    for name in ("2b", "7b", "72b"):
        print(f"      {name:>4s}: {count_params(get_preset(name)):,}")
    return 0 if same else 1
