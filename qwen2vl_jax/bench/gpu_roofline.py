"""The ``--gpu`` mode: our model alone at a released size in bf16, decode tokens/s against the
HBM-bandwidth roofline (bytes a decode step must read / the device's HBM bandwidth)."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np

from qwen2vl_jax.bench.inputs import ROWS_B1, bucket_shape, describe_inputs, make_inputs
from qwen2vl_jax.bench.report import Row, format_table
from qwen2vl_jax.perf.compile_count import CompileCounter
from qwen2vl_jax.perf.devices import hbm_gbps_for
from qwen2vl_jax.perf.timing import alternate, median


def run_gpu(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    from qwen2vl_jax import Qwen2VLForConditionalGeneration, get_preset
    from qwen2vl_jax.config import RuntimeConfig
    from qwen2vl_jax.generation.cache import cache_length

    dev = jax.devices()[0]
    if dev.platform != "gpu" and not args.allow_cpu:
        raise ValueError(f"--gpu: jax's default device is {dev.platform} ({dev.device_kind}); "
                         "pass --allow-cpu to run this mode anyway")
    gbps = hbm_gbps_for(dev.device_kind, args.hbm_gbps)
    if gbps is None:
        raise ValueError(f"--gpu: unknown HBM bandwidth for device {dev.device_kind!r}; pass --hbm-gbps")
    cfg = get_preset(args.preset)
    runtime = RuntimeConfig(dtype="bfloat16", param_dtype="bfloat16")
    buckets = runtime.buckets
    t, v = cfg.text, cfg.vision
    print(f"# qwen2vl_jax decode roofline: preset {args.preset!r}, bf16, batch {args.gpu_batch}, "
          f"jax {jax.__version__} on {dev.device_kind} ({dev.platform}), HBM {gbps:.0f} GB/s "
          f"({'--hbm-gbps' if args.hbm_gbps else 'detected'}); runs={args.runs}, new_tokens={args.new_tokens}")
    t0 = time.perf_counter()
    model = Qwen2VLForConditionalGeneration(cfg, runtime=runtime, seed=0)
    jax.block_until_ready(model.params)
    init_s = time.perf_counter() - t0
    pure = model.pure_params()
    vision_params = sum(int(x.size) for x in jax.tree.leaves(pure["visual"]))
    total_params = model.num_parameters
    text_params = total_params - vision_params
    itemsize = np.dtype(jax.tree.leaves(pure)[0].dtype).itemsize
    print(f"# {total_params:,} parameters ({vision_params:,} vision, {text_params:,} text incl. the "
          f"{'tied ' if t.tie_word_embeddings else ''}embedding table); random init {init_s:.1f} s")

    # Random text ids that avoid every special token of the preset's vocabulary.
    specials = [x for x in (cfg.image_token_id, cfg.video_token_id, cfg.vision_start_token_id,
                            cfg.vision_end_token_id, cfg.vision_token_id) if x is not None]
    small = [x for x in (cfg.bos_token_id, cfg.pad_token_id,
                         *(cfg.eos_token_id if isinstance(cfg.eos_token_id, tuple) else (cfg.eos_token_id,)))
             if x is not None]
    lo = max([x for x in small if x < 16], default=-1) + 1
    hi = min([x for x in specials + small if x >= 16] + [t.vocab_size])
    rng = np.random.default_rng(args.seed)
    inputs = make_inputs(rng, ROWS_B1 * args.gpu_batch, merge=v.spatial_merge_size, patch_dim=v.patch_dim,
                         text_ids=(lo, hi), image_token_id=cfg.image_token_id,
                         vision_start_token_id=cfg.vision_start_token_id,
                         vision_end_token_id=cfg.vision_end_token_id,
                         pad_token_id=cfg.pad_token_id if cfg.pad_token_id is not None else 0)
    print(f"# inputs: {describe_inputs(cfg, buckets, inputs)}")
    n_new = args.new_tokens
    kw = {"do_sample": False, "eos_token_id": [], "repetition_penalty": 1.0}

    def gen1():
        return model.generate(**inputs, max_new_tokens=1, **kw)

    def genN():
        return model.generate(**inputs, max_new_tokens=n_new, **kw)

    with CompileCounter() as clock:
        c1 = clock.measure(gen1)
        cN = clock.measure(genN)
        gen1(), genN()
        before = clock.backend_compiles
        times = alternate({"gen1": gen1, "genN": genN}, args.runs)
        recompiles = clock.backend_compiles - before
    m1, mN = median(times["gen1"]), median(times["genN"])
    b = args.gpu_batch
    decode_s = mN - m1
    steps = n_new - 1
    if steps < 1 or decode_s <= 0:  # not resolved (noise): numbers below are nan
        decode_s = float("nan")
    step_s = decode_s / max(steps, 1)
    tps = b * steps / decode_s

    # Bytes per decode step. Every text weight is read once per step: the decoder layers, the
    # final norm, and the embedding table once (with tied embeddings the LM head reads the whole
    # table; the input embedding gathers only B rows). The vision tower is not run while decoding,
    # so its weights are not counted. KV cache: keys and values of every valid position, averaged
    # over the decode steps (the ideal; our static cache attends over all T slots, masked).
    bucket = bucket_shape(cfg, buckets, inputs)
    s_real = int(inputs["attention_mask"].sum(axis=1).max())
    kv_per_token = 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * itemsize
    avg_ctx = s_real + (1 + steps) / 2
    read_params = text_params if t.tie_word_embeddings else text_params - t.vocab_size * t.hidden_size
    param_bytes = read_params * itemsize + (0 if t.tie_word_embeddings else b * t.hidden_size * itemsize)
    kv_bytes = b * kv_per_token * avg_ctx
    bytes_per_step = param_bytes + kv_bytes
    roofline_tps = b * gbps * 1e9 / bytes_per_step
    T = cache_length(bucket[1], n_new, buckets.cache_multiple)
    kv_static = bucket[0] * kv_per_token * T
    rows = [Row("prefill: generate(max_new_tokens=1)", b, 1e3 * m1, None, "ms"),
            Row(f"generate(max_new_tokens={n_new}), total", b, 1e3 * mN, None, "ms"),
            Row("decode step", b, 1e3 * step_s, None, "ms"),
            Row("decode throughput", b, tps, None, "tok/s"),
            Row("HBM roofline", b, roofline_tps, None, "tok/s")]
    print(format_table(rows, theirs_name="-"))
    frac = tps / roofline_tps
    print(f"\nfraction of the HBM roofline: {100 * frac:.1f}%  (decode tok/s / roofline tok/s)")
    print(f"decode tok/s = batch * ({n_new} - 1) / (median generate({n_new}) - median generate(1)); "
          f"medians of {args.runs} runs after warm-up; greedy, no eos.")
    table = ("the embedding table once: the tied LM head reads all of it" if t.tie_word_embeddings else
             "untied: the LM head read whole, the input embedding table only B gathered rows")
    print(f"bytes per decode step = text params {read_params:,} x {itemsize} B = {param_bytes / 1e6:,.2f} MB "
          f"({table}; the vision tower is excluded, it does not run in decode) + KV cache read {kv_bytes / 1e6:,.2f} MB "
          f"(batch x valid context, mean {avg_ctx:.0f} tokens x {kv_per_token:,} B/token) = "
          f"{bytes_per_step / 1e6:,.2f} MB; roofline tok/s = batch x {gbps:.0f} GB/s / bytes per step")
    print(f"(our static cache holds T={T} slots for bucket {bucket}: {kv_static / 1e6:,.2f} MB read per "
          f"step if every slot is touched)")
    print(f"our compile: generate(1): first call {c1[0]:.2f} s of which jax compile {c1[1]:.2f} s; "
          f"generate({n_new}): first call {cN[0]:.2f} s of which jax compile {cN[1]:.2f} s")
    print(f"backend compilations during the timed runs: {recompiles}")
    return {"rows": [dataclasses.asdict(r) for r in rows], "roofline_fraction": frac,
            "bytes_per_step": bytes_per_step, "hbm_gbps": gbps, "recompiles_during_timing": recompiles}
