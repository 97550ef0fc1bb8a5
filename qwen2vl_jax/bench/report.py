"""One row of a benchmark result and the table the benchmarks print."""

from __future__ import annotations

import dataclasses


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
        # ratio != ratio: nan, a decode rate the timings did not resolve
        ratio = "-" if r.ratio is None or r.ratio != r.ratio else f"{r.ratio:.2f}x"
        lines.append(f"{r.metric + ' [' + r.unit + ']':<44} {r.batch:>5} {r.ours:>12.2f} {theirs:>12} {ratio:>7}")
    return "\n".join(lines)
