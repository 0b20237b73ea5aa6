"""Run outputs a person reads: the metrics table and the learning-curve plot."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from heron.errors import ConfigError

Curves = Mapping[str, Sequence[Sequence[Mapping[str, float]]]]
"""method -> one metrics table (list of rows) per seed."""

# Two-sided 95% Student-t critical values by degrees of freedom (1.96 beyond 30).
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]  # fmt: skip


def mean_ci(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval (t-distribution; NaNs dropped)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), math.nan
    t = _T95[len(x) - 2] if len(x) - 1 <= len(_T95) else 1.96
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(len(x)))


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
        "nonfinite_steps",
    ]


def objective_columns(objectives: Sequence[str]) -> list[str]:
    """Columns a vector-reward env adds to ``metrics.csv``: each objective's episode return, then discounted."""
    return [*(f"objective/{n}" for n in objectives), *(f"objective_discounted/{n}" for n in objectives)]


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
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in rows]
    except (ValueError, TypeError, UnicodeDecodeError, csv.Error):
        raise ConfigError(f"{path}: is not a table of numbers (damaged or edited)") from None


def plot_learning_curves(curves: Curves, path: Path, title: str) -> None:
    """Mean ground-truth return per method with a 95% confidence band over seeds (one run: ± eval std)."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    _plot_column(ax, curves, "return_mean", spread="return_std")
    ax.set_ylabel("ground-truth episode return")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_factor_curves(curves: Curves, factor_names: Sequence[str], path: Path, title: str) -> None:
    """One panel per factor: its episode total in the evaluations, mean and 95% band per method.

    The return alone can hide what a policy does (traffic's diff-waiting-time return sums to
    about zero over an episode); the factors show it.
    """
    cols = min(len(factor_names), 3)
    rows = -(-len(factor_names) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax in axes[len(factor_names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes, factor_names, strict=False):
        _plot_column(ax, curves, f"factor/{name}")
        ax.set_title(f"{name} (episode total)", fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_column(ax: Any, curves: Curves, column: str, spread: str | None = None) -> None:
    """Per method, the mean of ``column`` over seeds with its 95% confidence band (one run: ``spread``)."""
    for method, runs in curves.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        length = min(len(r) for r in runs)
        steps = np.array([row["step"] for row in runs[0][:length]])
        values = np.array([[row.get(column, math.nan) for row in r[:length]] for r in runs])
        mean = values.mean(axis=0)
        (line,) = ax.plot(steps, mean, label=f"{method} (n={len(runs)})")
        if len(runs) > 1:
            half = np.array([mean_ci(values[:, i])[1] for i in range(length)])
        else:  # one run: the spread over its evaluation episodes
            half = np.array([row.get(spread, 0.0) if spread else 0.0 for row in runs[0][:length]])
        ax.fill_between(steps, mean - half, mean + half, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("env steps")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def plot_diagnostics(curves: Curves, path: Path, title: str) -> None:
    """Reward-model pair accuracy per method, and per method the share of pairs each level decided.

    Only methods with a learned reward appear; shares are stacked (most important level at the
    bottom, pairs left unlabeled on top) and averaged over seeds.
    """
    learned = {
        m: [r for r in runs if r and any(not math.isnan(row.get("rm_accuracy", math.nan)) for row in r)]
        for m, runs in curves.items()
    }
    learned = {m: runs for m, runs in learned.items() if runs}
    panels = 1 + len(learned)
    cols = min(panels, 4)
    rows = -(-panels // cols)
    fig = Figure(figsize=(4.2 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax in axes[panels:]:
        ax.set_visible(False)
    for ax, (method, runs) in zip(axes[1:], learned.items(), strict=False):
        length = min(len(r) for r in runs)
        steps = [row["step"] for row in runs[0][:length]]
        accuracy = _nanmean([[row.get("rm_accuracy", math.nan) for row in r[:length]] for r in runs])
        axes[0].plot(steps, accuracy, label=method)
        levels = [k for k in runs[0][-1] if k.startswith("decided/")] + ["unlabeled"]
        levels = [k for k in levels if any(not math.isnan(row.get(k, math.nan)) for r in runs for row in r)]
        shares = [np.nan_to_num(_nanmean([[row.get(k, math.nan) for row in r[:length]] for r in runs])) for k in levels]
        ax.stackplot(steps, shares, labels=[k.removeprefix("decided/") for k in levels], alpha=0.8)
        ax.set_title(f"{method}: pairs decided per level", fontsize=9)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_title("reward-model accuracy on unseen pairs", fontsize=9)
    if learned:
        axes[0].legend(fontsize=7)
    for ax in axes[:panels]:
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _nanmean(values: list[list[float]]) -> np.ndarray:
    """Column means ignoring NaN; NaN where a column has no value (before the first refit)."""
    x = np.asarray(values, dtype=np.float64)
    count = (~np.isnan(x)).sum(axis=0)
    return np.where(count > 0, np.nansum(x, axis=0) / np.maximum(count, 1), np.nan)


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
