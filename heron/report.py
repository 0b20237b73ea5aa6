"""Run outputs a person reads: the metrics table and the learning-curve plot."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def metric_columns(factor_names: Sequence[str]) -> list[str]:
    """Columns of ``metrics.csv``, in order."""
    return [
        "step",
        "wall_clock_s",
        "return_mean",
        "return_std",
        *(f"factor/{n}" for n in factor_names),
        "rm_accuracy",
        "rm_loss",
        "pairs_labeled",
        *(f"decided/{n}" for n in factor_names),
        "unlabeled",
        "nonfinite",
    ]


def write_metrics(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Write the whole metrics table (atomically)."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})
    tmp.replace(path)


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The metrics table as a list of rows of floats (NaN for empty cells)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def plot_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], path: Path, title: str) -> None:
    """Ground-truth return against env steps, one line per named run."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, rows in curves.items():
        steps = [r["step"] for r in rows]
        mean = [r["return_mean"] for r in rows]
        std = [r.get("return_std", 0.0) for r in rows]
        (line,) = ax.plot(steps, mean, label=name)
        ax.fill_between(
            steps,
            [m - s for m, s in zip(mean, std, strict=True)],
            [m + s for m, s in zip(mean, std, strict=True)],
            color=line.get_color(),
            alpha=0.15,
        )
    ax.set_xlabel("env steps")
    ax.set_ylabel("ground-truth episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
