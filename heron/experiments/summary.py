"""Tables and plots across seeds: mean and 95% confidence intervals per method."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from heron.report import Curves, mean_ci

# Columns of a run's last metrics row reported per method as they are.
CARRIED = ("factor/", "objective/", "objective_discounted/", "eval/", "length")


def run_stats(rows: Sequence[Mapping[str, float]], threshold: float | None) -> dict[str, float]:
    """Per-run figures: final return, normalized area under the curve, steps to threshold, wall-clock."""
    steps = np.array([r["step"] for r in rows], dtype=np.float64)
    returns = np.array([r["return_mean"] for r in rows], dtype=np.float64)
    last = rows[-1]
    stats = {
        "final_return": float(returns[-1]),
        # Mean return over training (trapezoids over env steps): higher means it learned sooner.
        "auc": float(np.trapezoid(returns, steps) / (steps[-1] - steps[0])) if len(rows) > 1 else float(returns[0]),
        "wall_clock_s": float(last["wall_clock_s"]),
        **{k: float(v) for k, v in last.items() if k.startswith(CARRIED)},
    }
    if threshold is not None:
        reached = np.flatnonzero(returns >= threshold)
        stats["steps_to_threshold"] = float(steps[reached[0]]) if len(reached) else math.nan
    return stats


def summarize(curves: Curves, threshold: float | None) -> list[dict[str, object]]:
    """One row per method: mean and 95% CI of every per-run figure, and the number of seeds."""
    table = []
    for method, runs in curves.items():
        per_run = [run_stats(rows, threshold) for rows in runs if rows]
        row: dict[str, object] = {"method": method, "seeds": len(per_run)}
        keys = list(per_run[0]) if per_run else []
        for key in keys:
            mean, ci = mean_ci([r[key] for r in per_run])
            row[key] = mean
            row[f"{key}_ci95"] = ci
        if threshold is not None:
            row["reached_threshold"] = sum(not math.isnan(r["steps_to_threshold"]) for r in per_run)
        table.append(row)
    return table


def write_summary(
    table: Sequence[Mapping[str, object]],
    out: Path,
    title: str,
    threshold: float | None,
    notes: Sequence[str] = (),
) -> None:
    """``summary.csv`` (every column) and ``summary.md`` (mean ± 95% CI, then ``notes``, a paragraph each)."""
    columns: list[str] = []
    for row in table:
        columns += [k for k in row if k not in columns]
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)
    figures = [c for c in columns if c not in ("method", "seeds", "reached_threshold") and not c.endswith("_ci95")]
    header = ["method", "seeds", *figures]
    lines = [f"# {title}", ""]
    if threshold is not None:
        lines += [
            f"Threshold for `steps_to_threshold`: return >= {threshold:g} (mean over the seeds that reached it).",
            "",
        ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [str(row["method"]), str(row["seeds"])]
        for key in figures:
            cell = _pm(row.get(key), row.get(f"{key}_ci95"))
            if key == "steps_to_threshold":
                cell += f" ({row['reached_threshold']}/{row['seeds']} reached)"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Values are means over seeds ± the half-width of the 95% confidence interval (Student t)."]
    for note in notes:
        lines += ["", note]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def _pm(mean: object, ci: object) -> str:
    if not isinstance(mean, float) or math.isnan(mean):
        return "-"
    # Small values (a traffic return of -0.12) keep three decimals, the rest one.
    digits = 3 if abs(mean) < 10 else 1
    if not isinstance(ci, float) or math.isnan(ci):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"
