"""Inference benchmark (issue 4 item 4): ours versus transformers on CPU, or ours alone on a GPU.

CPU comparison (default; needs the ``[parity]`` extra, torch and transformers)::

    python tools/bench_inference.py [--runs 5] [--new-tokens 32] [--config mid]

builds one random transformers ``Qwen2VLForConditionalGeneration`` (the ``mid`` config: ~59M
parameters, the exact count is printed), saves it with ``save_pretrained`` and loads that same
directory into both implementations: ours with ``from_pretrained(dir, dtype="float32")``,
transformers with ``attn_implementation="sdpa"`` in fp32 under ``torch.no_grad`` (torch threads
left at their default). The inputs are a one-image prompt (grid (1, 16, 16) = 64 image tokens
plus 40 text tokens) at batch 1, and 8 left-padded rows with different image grids and text
lengths at batch 8. Every measurement alternates (ours, theirs, ours, theirs, ...) after a
warm-up; medians over ``--runs`` (and the best run, which is robust to CPU contention). Our first
calls compile (XLA); that compile time is measured with jax.monitoring and reported separately,
never inside a timing, and the timed runs are checked to compile nothing.

GPU mode (``--gpu``; no torch needed) runs our model alone at a released size (``--preset 2b``,
bf16 weights and compute, random init), batch 1, and prints decode tokens/s and the fraction of
the HBM-bandwidth roofline reached. ``--gpu --allow-cpu --preset tiny --hbm-gbps X`` runs the
same code path on CPU (for tests).

torch / transformers are imported only inside the CPU comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# Token ids of the benchmark vocabularies (those of the parity oracle, qwen2vl_jax.testing.hf_oracle).
PAD, BOS, EOS, VISION_START, IMAGE, VIDEO, VISION_END = 0, 1, 2, 3, 4, 5, 6
FIRST_TEXT_ID = 7

# HF-style configs of the CPU comparison. "mid" is the benchmark model; "tiny" is for tests.
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "mid": {
        "text": {"vocab_size": 32000, "hidden_size": 512, "intermediate_size": 2048,
                 "num_hidden_layers": 10, "num_attention_heads": 8, "num_key_value_heads": 2,
                 "max_position_embeddings": 4096, "rope_theta": 1_000_000.0,
                 "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]}},
        "vision": {"depth": 4, "embed_dim": 256, "num_heads": 4, "mlp_ratio": 4},
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

HBM_GBPS = (  # (substring of jax device_kind, GB/s); first match wins
    ("H100 PCIE", 2000.0), ("H100 NVL", 3900.0), ("H100", 3350.0), ("H200", 4800.0),
    ("GH200", 4000.0), ("A100-SXM4-80GB", 2039.0), ("A100", 1555.0),
)


# ---------------------------------------------------------------------- inputs


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


def describe_inputs(cfg, inputs: dict[str, np.ndarray]) -> str:
    """Real sizes and the bucket shapes our model runs them at."""
    from qwen2vl_jax.layout import bucket_model_inputs, prepare_model_inputs

    batch = prepare_model_inputs(cfg, inputs["input_ids"], inputs["attention_mask"],
                                 inputs["pixel_values"], inputs["image_grid_thw"], None, None)
    bucketed = bucket_model_inputs(cfg, batch)
    b, s = inputs["input_ids"].shape
    B, S = bucketed["input_ids"].shape
    n = inputs["pixel_values"].shape[0]
    P = bucketed["pixel_values"].shape[0]
    real_tokens = int(inputs["attention_mask"].sum())
    return (f"{b} row(s) x {s} tokens ({real_tokens} real), {n} patches -> "
            f"our buckets: batch {B} x text {S}, {P} patches")


# ---------------------------------------------------------------------- timing helpers


class CompileClock:
    """Sums jax's trace + lowering + backend-compile durations (jax.monitoring) while active."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration")

    def __init__(self):
        self.seconds = 0.0
        self.backend_compiles = 0
        import jax

        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, secs: float, **_: Any) -> None:
        if event in self.EVENTS:
            self.seconds += secs
            self.backend_compiles += event == self.EVENTS[2]

    def close(self) -> None:
        import jax

        jax.monitoring.unregister_event_duration_listener(self._listen)

    def measure(self, fn: Callable[[], Any]) -> tuple[float, float, Any]:
        """Run fn once: (wall seconds, compile seconds inside it, result)."""
        before = self.seconds
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, self.seconds - before, out


def timed(fn: Callable[[], Any], settle_s: float = 0.05) -> float:
    time.sleep(settle_s)  # let the other side's worker threads (OpenMP / Eigen) stop spinning
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@dataclasses.dataclass
class Row:
    metric: str
    batch: int
    ours: float
    theirs: float | None
    unit: str  # "ms" (lower is better) or "tok/s" (higher is better)

    @property
    def ratio(self) -> float | None:
        """Our speedup: theirs_time / ours_time (= ours tok/s / theirs tok/s)."""
        if self.theirs is None:
            return None
        return self.theirs / self.ours if self.unit == "ms" else self.ours / self.theirs


def format_table(rows: list[Row], theirs_name: str = "transformers") -> str:
    head = f"{'metric':<44} {'batch':>5} {'ours':>12} {theirs_name:>12} {'ratio':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        theirs = "-" if r.theirs is None else f"{r.theirs:.2f}"
        ratio = "-" if r.ratio is None or r.ratio != r.ratio else f"{r.ratio:.2f}x"
        lines.append(f"{r.metric + ' [' + r.unit + ']':<44} {r.batch:>5} {r.ours:>12.2f} {theirs:>12} {ratio:>7}")
    return "\n".join(lines)


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


# ---------------------------------------------------------------------- CPU: ours vs transformers


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
    import torch
    import transformers
    from transformers import Qwen2VLForConditionalGeneration as HFModel

    from qwen2vl_jax import Qwen2VLForConditionalGeneration

    transformers.logging.set_verbosity_error()
    import jax

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
        print(f"# batch {b}: {describe_inputs(ours.config, inputs)}")

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
    metrics = ("forward", "gen1", "genN")

    # Warm-up: our first call of each program compiles; measure it, and check the outputs agree.
    clock = CompileClock()
    compile_s: dict[tuple[int, str], tuple[float, float]] = {}
    checks: dict[int, str] = {}
    try:
        for b, (o, t) in fns.items():
            for m in metrics:
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
        times: dict[tuple[int, str, str], list[float]] = {}
        for _ in range(args.runs):
            for b, (o, t) in fns.items():
                for m in metrics:  # alternate: ours, theirs, ours, theirs, ...
                    times.setdefault((b, m, "ours"), []).append(timed(o[m]))
                    times.setdefault((b, m, "theirs"), []).append(timed(t[m]))
        recompiles = clock.backend_compiles - compiles_before
    finally:
        clock.close()

    rows: list[Row] = []
    for b in cases:
        med = {(m, who): median(times[b, m, who]) for m in metrics for who in ("ours", "theirs")}
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
    spread = {who: max((max(v) - min(v)) / median(v) for (_, _, w), v in times.items() if w == who)
              for who in ("ours", "theirs")}
    print(f"noise: largest run-to-run spread (max - min) / median over all measurements: ours "
          f"{100 * spread['ours']:.0f}%, transformers {100 * spread['theirs']:.0f}%")
    for b in cases:
        print(f"our compile, batch {b}: " + ", ".join(
            f"{m}: first call {compile_s[b, m][0]:.2f} s of which jax compile {compile_s[b, m][1]:.2f} s"
            for m in metrics))
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


# ---------------------------------------------------------------------- GPU: ours alone, roofline


def detect_hbm_gbps(device_kind: str) -> float | None:
    kind = device_kind.upper()
    for key, gbps in HBM_GBPS:
        if key in kind:
            return gbps
    return None


def run_gpu(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    from qwen2vl_jax import Qwen2VLForConditionalGeneration, get_preset

    dev = jax.devices()[0]
    if dev.platform != "gpu" and not args.allow_cpu:
        raise ValueError(f"--gpu: jax's default device is {dev.platform} ({dev.device_kind}); "
                         "pass --allow-cpu to run this mode anyway")
    gbps = args.hbm_gbps or detect_hbm_gbps(dev.device_kind)
    if gbps is None:
        raise ValueError(f"--gpu: unknown HBM bandwidth for device {dev.device_kind!r}; pass --hbm-gbps")
    cfg = get_preset(args.preset, dtype="bfloat16", param_dtype="bfloat16")
    t, v = cfg.text, cfg.vision
    print(f"# qwen2vl_jax decode roofline: preset {args.preset!r}, bf16, batch {args.gpu_batch}, "
          f"jax {jax.__version__} on {dev.device_kind} ({dev.platform}), HBM {gbps:.0f} GB/s "
          f"({'--hbm-gbps' if args.hbm_gbps else 'detected'}); runs={args.runs}, new_tokens={args.new_tokens}")
    t0 = time.perf_counter()
    model = Qwen2VLForConditionalGeneration(cfg, seed=0)
    jax.block_until_ready(model.params)
    init_s = time.perf_counter() - t0
    pure = model.pure_params()
    vision_params = sum(int(x.size) for x in jax.tree.leaves(pure["visual"]))
    total_params = model.num_parameters
    text_params = total_params - vision_params
    itemsize = np.dtype(jax.tree.leaves(pure)[0].dtype).itemsize
    print(f"# {total_params:,} parameters ({vision_params:,} vision, {text_params:,} text incl. the "
          f"{'tied ' if t.tie_word_embeddings else ''}embedding table); random init {init_s:.1f} s")

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
    print(f"# inputs: {describe_inputs(cfg, inputs)}")
    n_new = args.new_tokens
    kw = {"do_sample": False, "eos_token_id": [], "repetition_penalty": 1.0}

    def gen1():
        return model.generate(**inputs, max_new_tokens=1, **kw)

    def genN():
        return model.generate(**inputs, max_new_tokens=n_new, **kw)

    clock = CompileClock()
    try:
        c1 = clock.measure(gen1)
        cN = clock.measure(genN)
        gen1(), genN()
        before = clock.backend_compiles
        t1, tN = [], []
        for _ in range(args.runs):
            t1.append(timed(gen1))
            tN.append(timed(genN))
        recompiles = clock.backend_compiles - before
    finally:
        clock.close()
    m1, mN = median(t1), median(tN)
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
    bucket = _bucket_shape(cfg, inputs)
    s_real = int(inputs["attention_mask"].sum(axis=1).max())
    kv_per_token = 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * itemsize
    avg_ctx = s_real + (1 + steps) / 2
    read_params = text_params if t.tie_word_embeddings else text_params - t.vocab_size * t.hidden_size
    param_bytes = read_params * itemsize + (0 if t.tie_word_embeddings else b * t.hidden_size * itemsize)
    kv_bytes = b * kv_per_token * avg_ctx
    bytes_per_step = param_bytes + kv_bytes
    roofline_tps = b * gbps * 1e9 / bytes_per_step
    from qwen2vl_jax.generate import cache_length

    T = cache_length(bucket[1], n_new, cfg.buckets.cache_multiple)
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


def _bucket_shape(cfg, inputs) -> tuple[int, int]:
    from qwen2vl_jax.layout import bucket_model_inputs, prepare_model_inputs

    batch = prepare_model_inputs(cfg, inputs["input_ids"], inputs["attention_mask"],
                                 inputs["pixel_values"], inputs["image_grid_thw"], None, None)
    return tuple(bucket_model_inputs(cfg, batch)["input_ids"].shape)


# ---------------------------------------------------------------------- CLI


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The benchmark's arguments (pass a parser, e.g. a CLI subparser, to add them to it)."""
    p = parser or argparse.ArgumentParser(prog="bench_inference", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median; default 5)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per row (default 32)")
    p.add_argument("--config", choices=sorted(CONFIGS), default="mid",
                   help="CPU comparison model: mid (~59M parameters, default) or tiny (tests)")
    p.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8],
                   help="comma-separated, from {1, 8} (default 1,8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu", action="store_true",
                   help="our model alone at --preset size in bf16 (no transformers): decode tok/s and "
                        "the fraction of the HBM roofline")
    p.add_argument("--preset", default="2b", help="--gpu: model preset (2b, 7b, 72b, tiny; default 2b)")
    p.add_argument("--gpu-batch", type=int, default=1, help="--gpu: batch size (default 1)")
    p.add_argument("--hbm-gbps", type=float, default=None,
                   help="--gpu: HBM bandwidth in GB/s (default: detected, H100 SXM 3350, H200 4800)")
    p.add_argument("--allow-cpu", action="store_true", help="--gpu: run even if jax has no GPU (tests)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.new_tokens < 1:
        raise ValueError("--runs and --new-tokens must be >= 1")
    if args.gpu:
        result = run_gpu(args)
    else:
        bad = [b for b in args.batch_sizes if b not in LAYOUTS]
        if bad:
            raise ValueError(f"--batch-sizes: no input layout for {bad}; choose from {sorted(LAYOUTS)}")
        result = run_cpu_comparison(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ValueError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
