"""The CPU comparison: our model against transformers' Qwen2VLForConditionalGeneration, one
random checkpoint loaded into both. The only module of the benchmark that imports torch and
transformers, inside its functions, so building the CLI never loads them."""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from typing import Any

import numpy as np

from qwen2vl_jax.bench.inputs import (
    BOS,
    CONFIGS,
    EOS,
    FIRST_TEXT_ID,
    IMAGE,
    LAYOUTS,
    PAD,
    VIDEO,
    VISION_END,
    VISION_START,
    describe_inputs,
    make_inputs,
)
from qwen2vl_jax.bench.report import Row, format_table
from qwen2vl_jax.perf.compile_count import CompileCounter
from qwen2vl_jax.perf.timing import alternate, median, spread

METRICS = ("forward", "gen1", "genN")


def build_hf_checkpoint(name: str, out_dir: str, seed: int = 0) -> int:
    """Random transformers model of config ``name`` saved to ``out_dir``; returns its parameter count."""
    import torch
    from transformers import Qwen2VLConfig
    from transformers import Qwen2VLForConditionalGeneration as HFModel

    spec = CONFIGS[name]
    text = dict(spec["text"], rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
                bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    vision = dict(spec["vision"], hidden_size=text["hidden_size"], spatial_merge_size=2, patch_size=14,
                  temporal_patch_size=2, in_channels=3)
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=IMAGE, video_token_id=VIDEO,
                        vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
                        tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = HFModel(cfg).eval()  # transformers' own init (normal(0, 0.02), unit norms, zero biases)
    count = sum(p.numel() for p in model.parameters())  # tied: the embedding table counts once
    model.save_pretrained(out_dir)
    return count


def run_cpu_comparison(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import torch
    import transformers
    from transformers import Qwen2VLForConditionalGeneration as HFModel

    from qwen2vl_jax import Qwen2VLForConditionalGeneration

    transformers.logging.set_verbosity_error()
    print(f"# qwen2vl_jax vs transformers {transformers.__version__} (torch {torch.__version__}, "
          f"sdpa, fp32, {torch.get_num_threads()} torch threads); jax {jax.__version__} on "
          f"{jax.devices()[0].device_kind}; runs={args.runs}, new_tokens={args.new_tokens}")
    n_new = args.new_tokens
    with tempfile.TemporaryDirectory(prefix="qwen2vl_bench_") as tmp:
        n_params = build_hf_checkpoint(args.config, tmp, seed=args.seed)
        ours = Qwen2VLForConditionalGeneration.from_pretrained(tmp, dtype="float32")
        hf = HFModel.from_pretrained(tmp, attn_implementation="sdpa", dtype=torch.float32).eval()
    assert ours.num_parameters == n_params, (ours.num_parameters, n_params)
    print(f"# config {args.config!r}: {n_params:,} parameters (embedding table tied, counted once); "
          f"text hidden {ours.config.text.hidden_size} x {ours.config.text.num_hidden_layers} layers, "
          f"vocab {ours.config.text.vocab_size}, vision depth {ours.config.vision.depth} x "
          f"{ours.config.vision.embed_dim}")

    rng = np.random.default_rng(args.seed)
    text_ids = (FIRST_TEXT_ID, ours.config.text.vocab_size)
    cases = {}
    for b in args.batch_sizes:
        inputs = make_inputs(rng, LAYOUTS[b], merge=2, patch_dim=ours.config.vision.patch_dim,
                             text_ids=text_ids, image_token_id=IMAGE, vision_start_token_id=VISION_START,
                             vision_end_token_id=VISION_END, pad_token_id=PAD)
        t_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
        cases[b] = (inputs, t_inputs)
        print(f"# batch {b}: {describe_inputs(ours.config, ours.runtime.buckets, inputs)}")

    gen_kw = {"do_sample": False, "repetition_penalty": 1.0, "eos_token_id": EOS, "pad_token_id": PAD}

    def ours_fns(inputs):
        return {
            "forward": lambda: np.asarray(ours(**inputs).logits),
            "gen1": lambda: ours.generate(**inputs, max_new_tokens=1, min_new_tokens=1, **gen_kw),
            "genN": lambda: ours.generate(**inputs, max_new_tokens=n_new, min_new_tokens=n_new, **gen_kw),
        }

    def theirs_fns(t_inputs):
        def fwd():
            with torch.no_grad():
                return hf(**t_inputs).logits

        def gen(n):
            with torch.no_grad():
                return hf.generate(**t_inputs, max_new_tokens=n, min_new_tokens=n, **gen_kw)

        return {"forward": fwd, "gen1": lambda: gen(1), "genN": lambda: gen(n_new)}

    fns = {b: (ours_fns(cases[b][0]), theirs_fns(cases[b][1])) for b in cases}

    # Warm-up: our first call of each program compiles; measure it, and check the outputs agree.
    compile_s: dict[tuple[int, str], tuple[float, float]] = {}
    checks: dict[int, str] = {}
    with CompileCounter() as clock:
        for b, (o, t) in fns.items():
            for m in METRICS:
                wall, comp, out_o = clock.measure(o[m])
                out_t = t[m]()
                compile_s[b, m] = (wall, comp)
                if m == "forward":
                    mask = cases[b][0]["attention_mask"].astype(bool)
                    diff = float(np.abs(out_o - out_t.numpy())[mask].max())
                    checks[b] = f"max |logit diff| at real positions {diff:.2e}"
                elif m == "genN":
                    same = int((out_o == out_t.numpy()).all(axis=1).sum())
                    checks[b] += f"; greedy continuations identical in {same}/{b} rows"
                o[m]()  # a second warm-up call for both (allocators, oneDNN primitive caches)
                t[m]()
        compiles_before = clock.backend_compiles
        # Alternate: ours, theirs, ours, theirs, ... over every (batch, metric).
        times = alternate({(b, m, who): fn[m] for b, (o, t) in fns.items() for m in METRICS
                           for who, fn in (("ours", o), ("theirs", t))}, args.runs)
        recompiles = clock.backend_compiles - compiles_before

    rows: list[Row] = []
    for b in cases:
        med = {(m, who): median(times[b, m, who]) for m in METRICS for who in ("ours", "theirs")}
        rows.append(Row("prefill: forward, full logits", b, 1e3 * med["forward", "ours"],
                        1e3 * med["forward", "theirs"], "ms"))
        rows.append(Row("prefill: generate(max_new_tokens=1)", b, 1e3 * med["gen1", "ours"],
                        1e3 * med["gen1", "theirs"], "ms"))
        rows.append(Row(f"generate(max_new_tokens={n_new}), total", b, 1e3 * med["genN", "ours"],
                        1e3 * med["genN", "theirs"], "ms"))
        if n_new > 1:
            def tps(who, med=med, b=b):  # nan when the difference is not resolved (raise --new-tokens)
                decode_s = med["genN", who] - med["gen1", who]
                return b * (n_new - 1) / decode_s if decode_s > 0 else float("nan")

            rows.append(Row("decode throughput", b, tps("ours"), tps("theirs"), "tok/s"))
    print(format_table(rows))
    best = [Row(r.metric, r.batch, *(_best(times, r, who, n_new) for who in ("ours", "theirs")), r.unit)
            for r in rows]
    print(f"\nthe same, best of {args.runs} runs (robust to CPU contention from other processes):")
    print(format_table(best))
    print(f"\nratio = our speedup (transformers time / our time; for tok/s ours / theirs). Medians of "
          f"{args.runs} alternating runs after warm-up.")
    print("prefill: 'forward' is model(**inputs) (all-position logits, ours blocked on as numpy; "
          "theirs hf_model(**inputs) under no_grad); 'generate(max_new_tokens=1)' is prompt -> first "
          "token inside generate (last-position logits only), the prefill used below.")
    print(f"decode tok/s = batch * ({n_new} - 1) / (median generate({n_new}) - median generate(1)): "
          f"the first new token comes out of the prefill, so {n_new} - 1 tokens per row are decoded "
          f"in the difference. Both sides: greedy, min_new_tokens = max_new_tokens (eos never "
          f"stops a row), repetition_penalty 1.0.")
    noise = {who: max(spread(v) for (_, _, w), v in times.items() if w == who) for who in ("ours", "theirs")}
    print(f"noise: largest run-to-run spread (max - min) / median over all measurements: ours "
          f"{100 * noise['ours']:.0f}%, transformers {100 * noise['theirs']:.0f}%")
    for b in cases:
        print(f"our compile, batch {b}: " + ", ".join(
            f"{m}: first call {compile_s[b, m][0]:.2f} s of which jax compile {compile_s[b, m][1]:.2f} s"
            for m in METRICS))
    for b in cases:
        print(f"check, batch {b}: {checks[b]}")
    print(f"backend compilations during the timed runs: {recompiles}")
    return {"parameters": n_params, "rows": [dataclasses.asdict(r) | {"ratio": r.ratio} for r in rows],
            "compile_s": {f"b{b}/{m}": v[1] for (b, m), v in compile_s.items()},
            "recompiles_during_timing": recompiles, "checks": checks,
            "times_s": {f"b{b}/{m}/{who}": v for (b, m, who), v in times.items()}}


def _best(times: dict, row: Row, who: str, n_new: int) -> float:
    """A table entry from the fastest run instead of the median."""
    b = row.batch
    if row.unit == "tok/s":
        decode_s = min(times[b, "genN", who]) - min(times[b, "gen1", who])
        return b * (n_new - 1) / decode_s if decode_s > 0 else float("nan")
    metric = ("forward" if row.metric.startswith("prefill: forward") else
              "gen1" if row.metric.startswith("prefill: generate") else "genN")
    return 1e3 * min(times[b, metric, who])
