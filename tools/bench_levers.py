"""A/B of the CPU inference levers, each switched off alone, against all of them on and against
transformers, measured alternating (on, each lever off, theirs, on, ...) in one process.

Levers (each "off" variant is its own model over the same parameters, so its own programs):
  ladder      the fine bucket ladder      off: ``BucketConfig.powers_of_two()``
  padseg      per-64 padding segments     off: all padding patches in one segment
  windowed    windowed CPU attention      off: the lockstep xla_blocked / dense xla forward
  livewindow  live-window decode reads    off: every decode step reads the whole cache
  topk        lax.top_k sampling          off: two sorts of the vocabulary per token

Cases (the mid6 checkpoint of ``qwen2vl_jax.bench``, fp32, batch 1): ``img1024`` one image of
1,024 patches + 64 text tokens, ``4img576`` four images of 576 patches + 90 text tokens,
``text674`` 674 text tokens; forward (all-position logits) for those, ``decode64`` greedy
decode tokens/s of 64 new tokens after the img1024 prompt, ``sample64`` the same sampled with
top_k 50 / top_p 0.9. ``--profile`` adds each side's vision tower alone per image case.

    python tools/bench_levers.py --runs 7 [--levers windowed,ladder] [--cases img1024,decode64]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile

import numpy as np

LEVERS = ("ladder", "padseg", "windowed", "livewindow", "topk")
CASES = {"img1024": (((1, 32, 32),), 64), "4img576": (((1, 24, 24),) * 4, 90), "text674": ((), 674)}
DECODES = ("decode64", "sample64")
N_NEW = 64


def _full_read(self, layer, q, q_segment_ids, scale=None):
    from qwen2vl_jax.ops.attention import attention

    keys, values = self.read(layer)
    return attention(q, keys, values, q_segment_ids=q_segment_ids, kv_segment_ids=self.segment_ids,
                     causal=False, impl="xla", scale=scale)


@contextlib.contextmanager
def lever_off(name: str):
    """While open, lever ``name`` is off (trace-time switches act on the programs compiled now;
    the padding segments act on the host on every call)."""
    import qwen2vl_jax.generation.sampling as sampling
    import qwen2vl_jax.layout.buckets as buckets
    import qwen2vl_jax.ops.attention as attention
    from qwen2vl_jax.generation.cache import KVCache

    target = {"padseg": (buckets, "PAD_SEGMENT_PATCHES", 1 << 30),
              "windowed": (attention, "windowed_covers", lambda *a: False),
              "livewindow": (KVCache, "attend", _full_read),
              "topk": (sampling, "top_k_top_p", sampling.top_k_top_p_sorted)}.get(name)
    if target is None:
        yield
        return
    obj, attr, value = target
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


def _our_vision(model, inputs):
    """Our vision tower alone at the bucketed patch stream forward() runs."""
    import jax
    from flax import nnx

    from qwen2vl_jax.bench.inputs import bucketed

    b = bucketed(model.config, model.runtime.buckets, inputs)
    graphdef = model.graphdef
    fn = model.cached_jit("vision_bucketed", lambda: jax.jit(
        lambda params, pix, pos, seg: nnx.merge(graphdef, params).visual(pix, pos, seg)))
    args = (b["pixel_values"], b["vision_pos"], b["vision_segment_ids"])
    return lambda: np.asarray(fn(model.params, *args))


def _inputs(case: str, rng, cfg):
    from qwen2vl_jax.bench.grid import make_rows

    grids, text = CASES["img1024" if case in DECODES else case]
    return make_rows(1, grids, text, "image", rng, cfg.vision.patch_dim, cfg.text.vocab_size)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--levers", default=",".join(LEVERS))
    p.add_argument("--cases", default=",".join((*CASES, *DECODES)))
    p.add_argument("--checkpoint", default=None, help="a saved mid6 HF checkpoint to reuse (else a temporary one)")
    p.add_argument("--profile", action="store_true", help="also time each side's vision tower alone")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    levers = [x for x in args.levers.split(",") if x]
    cases = [x for x in args.cases.split(",") if x]
    unknown = [x for x in levers if x not in LEVERS] + [x for x in cases if x not in (*CASES, *DECODES)]
    if unknown:
        p.error(f"unknown lever or case {unknown}")

    import torch
    import transformers
    from transformers import Qwen2VLForConditionalGeneration as HFModel

    from qwen2vl_jax import Qwen2VLForConditionalGeneration
    from qwen2vl_jax.bench.cpu_vs_transformers import build_hf_checkpoint
    from qwen2vl_jax.bench.inputs import EOS, PAD
    from qwen2vl_jax.config import BucketConfig
    from qwen2vl_jax.perf.timing import alternate, median

    transformers.logging.set_verbosity_error()
    with contextlib.ExitStack() as stack:
        ckpt = args.checkpoint
        if ckpt is None or not os.path.exists(os.path.join(ckpt, "config.json")):
            ckpt = ckpt or stack.enter_context(tempfile.TemporaryDirectory(prefix="levers_"))
            build_hf_checkpoint("mid6", ckpt, seed=0)
        on = Qwen2VLForConditionalGeneration.from_pretrained(ckpt, dtype="float32")
        hf = HFModel.from_pretrained(ckpt, attn_implementation="sdpa", dtype=torch.float32).eval()
    models = {"on": on}
    for lever in levers:
        buckets = BucketConfig.powers_of_two() if lever == "ladder" else on.runtime.buckets
        runtime = dataclasses.replace(on.runtime, buckets=buckets)
        models[lever] = Qwen2VLForConditionalGeneration(on.config, on.params, runtime=runtime,
                                                        generation_config=on.generation_config)

    greedy = {"do_sample": False, "repetition_penalty": 1.0, "eos_token_id": EOS, "pad_token_id": PAD}
    sample = {**greedy, "do_sample": True, "top_k": 50, "top_p": 0.9, "temperature": 1.0}
    rng = np.random.default_rng(0)
    results = {}
    for case in cases:
        inputs = _inputs(case, rng, on.config)
        t_in = {k: torch.from_numpy(v) for k, v in inputs.items()}
        kw = sample if case == "sample64" else greedy
        fns = {}
        for name, m in models.items():
            def call(n=None, m=m, name=name):
                with lever_off(name):
                    if n is None:
                        return np.asarray(m(**inputs).logits)
                    return m.generate(**inputs, max_new_tokens=n, min_new_tokens=n, **kw)
            if case in DECODES:
                fns[name, 1], fns[name, N_NEW] = (lambda c=call: c(1)), (lambda c=call: c(N_NEW))
            else:
                fns[name] = call

        def theirs(n=None):
            with torch.no_grad():
                if n is None:
                    return hf(**t_in).logits.numpy()
                return hf.generate(**t_in, max_new_tokens=n, min_new_tokens=n, **kw).numpy()
        if case in DECODES:
            fns["theirs", 1], fns["theirs", N_NEW] = (lambda: theirs(1)), (lambda: theirs(N_NEW))
        else:
            fns["theirs"] = theirs
        if args.profile and case in CASES and CASES[case][0]:
            fns["vision ours"] = _our_vision(on, inputs)
            t_pix, t_grid = torch.from_numpy(inputs["pixel_values"]), torch.from_numpy(inputs["image_grid_thw"])

            def vision_theirs():
                with torch.no_grad():
                    return hf.model.visual(t_pix, grid_thw=t_grid)
            fns["vision theirs"] = vision_theirs
        for fn in fns.values():  # warm-up twice (compile; allocators, oneDNN caches)
            fn(), fn()
        times = {k: median(v) for k, v in alternate(fns, args.runs).items()}
        load = os.getloadavg()[0]
        if case in DECODES:
            row = {name: (N_NEW - 1) / max(times[name, N_NEW] - times[name, 1], 1e-9)
                   for name in (*models, "theirs")}
            unit = "tok/s"
        else:
            row = {k: 1e3 * v for k, v in times.items()}
            unit = "ms"
        results[case] = {"unit": unit, "load": load, **row}
        cells = ", ".join(f"{k}: {v:.1f}" for k, v in row.items())
        print(f"{case} [{unit}] (load {load:.1f}): {cells}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
