"""Loss and throughput curves of a run, from its ``metrics.jsonl``, as a PNG.

matplotlib is imported lazily (only when a plot is made) and drawn with the Agg canvas directly:
no pyplot, no display, no global backend switch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from qwen2vl_jax.train.metrics import METRICS_FILE, read_metrics

PLOT_FILE = "metrics.png"


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for rec in records:
        if key in rec:
            v = rec[key]
            xs.append(rec["step"])
            ys.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan)
    return xs, ys


def _smooth(ys: list[float], n: int) -> list[float]:
    """Trailing mean over the last ``n`` finite values (NaNs kept as gaps)."""
    out, window = [], []
    for y in ys:
        if math.isfinite(y):
            window.append(y)
            if len(window) > n:
                window.pop(0)
            out.append(sum(window) / len(window))
        else:
            out.append(math.nan)
    return out


def _top(ys: list[float]) -> float:
    """Upper y limit with headroom above the largest finite value."""
    finite = [y for y in ys if math.isfinite(y)]
    return 1.15 * max(finite) if finite and max(finite) > 0 else 1.0


def plot_run(run_dir: str | os.PathLike, out_png: str | os.PathLike | None = None) -> Path:
    """Write the loss curve (top) and tokens/s (bottom, with MFU on a right axis when logged) of
    the run in ``run_dir`` to ``out_png`` (default ``run_dir/metrics.png``); return its path.

    ``run_dir`` may also be the ``metrics.jsonl`` file itself. When a step was logged more than
    once (a resumed run whose file was not truncated) its last record wins.
    Raises FileNotFoundError when there is no metrics file, ValueError when it holds no
    records or neither ``loss`` nor ``tokens_per_s``, ImportError without matplotlib.
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir if run_dir.is_file() else run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} at {metrics_path}: is {run_dir} a run directory?")
    records = read_metrics(metrics_path)
    if not records:
        raise ValueError(f"{metrics_path} holds no metrics records (empty, or the run logged nothing yet)")
    by_step = {}
    for rec in records:
        by_step[rec["step"]] = rec
    records = [by_step[s] for s in sorted(by_step)]
    if not any("loss" in r or "tokens_per_s" in r for r in records):
        raise ValueError(f"{metrics_path} has neither 'loss' nor 'tokens_per_s' to plot")

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("plotting needs matplotlib, which is not installed: pip install matplotlib "
                          "(or the project's [train] extra)") from e

    out = Path(out_png) if out_png is not None else metrics_path.parent / PLOT_FILE
    fig = Figure(figsize=(9, 7), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_tp = fig.subplots(2, 1, sharex=True)
    fig.suptitle(f"run: {metrics_path.parent.name}")

    steps, loss = _series(records, "loss")
    if steps:
        if len(steps) >= 20:
            ax_loss.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
            ax_loss.plot(steps, _smooth(loss, max(len(steps) // 20, 2)), color="tab:blue", linewidth=2,
                         label="loss (smoothed)")
        else:
            ax_loss.plot(steps, loss, color="tab:blue", marker="o", markersize=3, label="loss")
    eval_steps, eval_loss = _series(records, "eval_loss")
    if eval_steps:
        ax_loss.plot(eval_steps, eval_loss, color="tab:red", marker="s", linestyle="--", label="eval loss")
    if steps or eval_steps:
        ax_loss.legend(loc="upper right")
    else:
        ax_loss.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.set_ylabel("loss")
    ax_loss.grid(True, alpha=0.3)

    tp_steps, tps = _series(records, "tokens_per_s")
    if tp_steps:
        ax_tp.plot(tp_steps, tps, color="tab:green", marker="." if len(tp_steps) < 50 else None,
                   label="tokens/s")
        ax_tp.set_ylim(0, _top(tps))
        mfu_steps, mfu = _series(records, "mfu")
        if mfu_steps:
            ax_mfu = ax_tp.twinx()
            ax_mfu.plot(mfu_steps, [100 * m for m in mfu], color="tab:orange", linestyle=":", label="MFU")
            ax_mfu.set_ylabel("MFU (%)")
            ax_mfu.set_ylim(0, _top([100 * m for m in mfu]))
            ax_mfu.legend(loc="lower right")
        ax_tp.legend(loc="lower left")
    else:
        ax_tp.text(0.5, 0.5, "no throughput logged", ha="center", va="center", transform=ax_tp.transAxes)
    ax_tp.set_ylabel("tokens/s")
    ax_tp.set_xlabel("step")
    ax_tp.grid(True, alpha=0.3)

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
