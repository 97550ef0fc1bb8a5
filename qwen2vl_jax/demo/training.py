"""``qwen2vl-jax demo``: a small Qwen2-VL learns to read, from scratch, on a laptop CPU.

The recipe is ``experiments/configs/demo.yaml`` (any key can be overridden: ``demo steps=100``):

1. trains a ~1M-parameter model on synthetic pictures of varied sizes and aspect ratios
   (``data_pipelines/synthetic.py``: a coloured shape and a word or digit; questions ask for the
   word, the number, the colour or the shape), through the real path: grain pipeline, packing
   into fixed budgets, the jitted train step, Orbax checkpoints, metrics.jsonl;
2. writes the loss / throughput plot;
3. evaluates exact match of generated answers on held-out pictures (another seed) through the
   inference path (``generate``), next to the best answer-without-looking baseline;
4. shows a few held-out pictures (saved as PNG) with the model's answers.

Running it again resumes / reuses the run in ``--workdir`` (default ``runs/``).
"""

from __future__ import annotations

import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "demo.yaml"


def run(overrides: list[str] = (), workdir: str | None = None) -> int:
    from data_pipelines.sources import open_source
    from data_pipelines.synthetic import blind_baseline
    from qwen2vl_jax.train.evaluate import evaluate_run
    from qwen2vl_jax.train.loop import train
    from qwen2vl_jax.train.metrics import read_metrics
    from qwen2vl_jax.train.plot import plot_run
    from qwen2vl_jax.train.run_config import load_run_config

    if not RECIPE.exists():
        raise ValueError(f"the demo recipe {RECIPE} is missing (run the demo from a clone of the repository)")
    extra = [f"output_dir={workdir}"] if workdir else []
    run = load_run_config(RECIPE, [*extra, *overrides])
    t0 = time.perf_counter()
    print(f"[1/4] training from scratch: {run.steps} steps on synthetic visual questions ({RECIPE.name})",
          flush=True)
    result = train(run)
    train_s = time.perf_counter() - t0
    lines = [x for x in read_metrics(run.run_dir / "metrics.jsonl") if "loss" in x]
    if lines:
        def mean(key: str) -> float:
            vals = [x[key] for x in lines if x.get(key) is not None]
            return sum(vals) / len(vals) if vals else float("nan")

        print(f"      loss {lines[0]['loss']:.3f} (step {lines[0]['step']}) -> {lines[-1]['loss']:.3f} "
              f"(step {lines[-1]['step']}); {mean('tokens_per_s'):.0f} tokens/s; padding: text "
              f"{100 * mean('text_padding_fraction'):.1f}%, patches {100 * mean('patch_padding_fraction'):.1f}%; "
              f"{train_s:.0f} s")

    png = plot_run(run.run_dir)
    print(f"[2/4] loss curve: {png}")

    print(f"[3/4] evaluating on {run.eval.num_examples} held-out pictures (generate, greedy)", flush=True)
    res = evaluate_run(run, show=6)
    baseline = blind_baseline(open_source(dict(run.data.source)), open_source(dict(run.eval.source)))
    print(f"      {res.summary()}")

    print("[4/4] a few held-out pictures and the model's answers:")
    examples = run.run_dir / "examples"
    examples.mkdir(exist_ok=True)
    for k, ex in enumerate(res.examples):
        path = examples / f"{k:02d}.png"
        ex["image"].save(path)
        mark = "ok " if ex["correct"] else "XX "
        print(f"      {mark} {path.name} {ex['image_size'][0]}x{ex['image_size'][1]}  {ex['question']!r:30s} "
              f"-> {ex['answer']!r} (truth {ex['reference']!r})")
    print(f"run directory: {result.run_dir} (model: {result.model_dir})")
    print(f"held-out exact match: {100 * res.exact_match:.1f}% (answer-without-looking baseline: {100 * baseline:.1f}%)")
    return 0
