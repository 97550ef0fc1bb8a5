"""The sweep's printed results: a markdown table per point, the worst and median ratios, the
programs each bucket ladder compiles for the grid, and the log-log prefill plot (matplotlib,
drawn with the Agg canvas; imported only when a plot is made)."""

from __future__ import annotations

import math
import statistics
from typing import Any

RATIOS = (("forward", "forward_ratio"), ("prefill", "prefill_ratio"), ("decode", "decode_ratio"),
          ("generate", "generate_ratio"))


def format_sweep(results: list[dict[str, Any]], ladders: dict[str, dict], n_new: int) -> str:
    head = ("| point | prompt | forward ms ours / theirs | x | prefill ms ours / theirs | x | "
            "decode tok/s ours / theirs | x | generate ms ours / theirs | x |")
    lines = [head, "|" + "---|" * 10]
    for r in results:
        lines.append(
            f"| {r['point']} | {r['prompt_tokens']} | {r['forward_ms_ours']:.0f} / {r['forward_ms_theirs']:.0f} | "
            f"{r['forward_ratio']:.2f} | {r['prefill_ms_ours']:.0f} / {r['prefill_ms_theirs']:.0f} | "
            f"{r['prefill_ratio']:.2f} | {r['decode_tok_s_ours']:.1f} / {r['decode_tok_s_theirs']:.1f} | "
            f"{r['decode_ratio']:.2f} | {r['generate_ms_ours']:.0f} / {r['generate_ms_theirs']:.0f} | "
            f"{r['generate_ratio']:.2f} |")
    lines.append("")
    lines.append("ratio x = our speedup (their time / ours; tok/s ours / theirs); medians of alternating runs; "
                 f"generate = prompt + {n_new} greedy tokens, decode tok/s = batch ({n_new} - 1) / "
                 f"(generate - prefill).")
    for label, key in RATIOS:
        vals = [r[key] for r in results if not math.isnan(r[key])]
        if vals:
            worst = min(results, key=lambda r: r[key] if not math.isnan(r[key]) else math.inf)
            lines.append(f"{label}: worst {min(vals):.2f}x ({worst['point']}), median {statistics.median(vals):.2f}x, "
                         f"points >= 2x: {sum(v >= 2 for v in vals)}/{len(vals)}, below 1x: {sum(v < 1 for v in vals)}")
    checks = max(r["max_logit_diff"] for r in results)
    same = sum(r["greedy_identical_rows"] for r in results)
    rows = sum(r["batch"] for r in results)
    lines.append(f"checks: max |logit diff| at real positions {checks:.2e}; greedy continuations identical "
                 f"in {same}/{rows} rows; backend compilations during timed runs: "
                 f"{sum(r['recompiles_during_timing'] for r in results)}; our compile "
                 f"{sum(r['compile_s'] for r in results):.1f} s in {sum(r['compiles'] for r in results)} programs")
    lines.append("")
    lines.append("| bucket ladder | text / patch buckets | programs for these points (forward + prefill + "
                 "decode) | text padding | patch padding |")
    lines.append("|---|---|---|---|---|")
    for name, d in ladders.items():
        lines.append(f"| {name} | {d['text_buckets']} / {d['patch_buckets']} | {d['programs']} "
                     f"({d['forward']} + {d['prefill']} + {d['decode']}) | {100 * d['text_padding']:.1f}% | "
                     f"{100 * d['patch_padding']:.1f}% |")
    return "\n".join(lines)


def plot_prefill(results: list[dict[str, Any]], path: str) -> str:
    """Log-log prefill time against image tokens, one line per (batch, text) for each side."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - matplotlib is a core dependency
        raise ImportError("the sweep plot needs matplotlib: pip install matplotlib") from e
    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot(1, 1, 1)
    series: dict[tuple[int, int], list[dict]] = {}
    for r in results:
        if r["image_tokens"] > 0:
            series.setdefault((r["batch"], r["text"]), []).append(r)
    colors = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7"]
    for i, ((b, t), rs) in enumerate(sorted(series.items())):
        rs = sorted(rs, key=lambda r: (r["image_tokens"], r["vision"]))
        x = [r["image_tokens"] for r in rs]
        c = colors[i % len(colors)]
        ax.plot(x, [r["prefill_ms_ours"] for r in rs], "o-", color=c, label=f"ours, batch {b}, text {t}")
        ax.plot(x, [r["prefill_ms_theirs"] for r in rs], "s--", color=c, alpha=0.7,
                label=f"transformers, batch {b}, text {t}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("image / video tokens in the batch (merged)")
    ax.set_ylabel("prefill: prompt -> first token [ms]")
    ax.set_title("prefill time, ours (solid) vs transformers (dashed), CPU fp32")
    ax.grid(True, which="both", alpha=0.3)
    if series:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(path)
    return path
