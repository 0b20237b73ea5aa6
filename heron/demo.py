"""``heron demo``: the ranking against equal weights and the true reward, on Pendulum, in minutes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from heron import report
from heron.envs import REGISTRY
from heron.sb3.run import TrainResult, train

DEMO_ENV = "heron/Pendulum-v1"
DEMO_METHODS = ("heron", "weighted-sum", "ground-truth")


def demo_ranking() -> str:
    """The ranking heron learns from in the demo (the env's default), e.g. ``angle (1 std) > ... > torque``."""
    return " > ".join(
        f.name + ("" if f.margin == 0 else f" ({f.margin:g}{' std' if f.margin_mode == 'std' else ''})")
        for f in REGISTRY[DEMO_ENV].hierarchy.factors
    )


@dataclass(frozen=True)
class DemoRow:
    """One method's outcome in the demo table.

    :param method: the method's name.
    :param final_return: mean ground-truth return of the last evaluation.
    :param return_std: its std over the evaluation episodes.
    :param factors: each factor's episode total in the last evaluation.
    :param wall_clock_s: the run's wall-clock in seconds.
    :param rm_accuracy: the reward model's pair accuracy at the last refit (None without one).
    :param decided: share of pairs each level of the ranking decided at the last refit (empty without one).
    """

    method: str
    final_return: float
    return_std: float
    factors: dict[str, float]
    wall_clock_s: float
    rm_accuracy: float | None
    decided: dict[str, float]


def run_demo(
    out: str | Path, total_timesteps: int = 50_000, seed: int = 0, progress: bool = True
) -> tuple[list[DemoRow], Path]:
    """Train each demo method with PPO at equal steps and seed; returns the table and the plot's path."""
    out = Path(out)
    results: dict[str, TrainResult] = {}
    for method in DEMO_METHODS:
        results[method] = train(
            DEMO_ENV,
            algorithm="ppo",
            method=method,
            total_timesteps=total_timesteps,
            seed=seed,
            out=out / method,
            progress=progress,
        )
    plot = out / "demo.png"
    report.plot_learning_curves(
        {m: [r.metrics] for m, r in results.items()},
        plot,
        f"{DEMO_ENV}, PPO, {total_timesteps} steps, seed {seed}\nheron: {demo_ranking()}",
    )
    rows = []
    for method, result in results.items():
        last = result.metrics[-1]
        rows.append(
            DemoRow(
                method=method,
                final_return=float(last["return_mean"]),
                return_std=float(last["return_std"]),
                factors={k.removeprefix("factor/"): float(v) for k, v in last.items() if k.startswith("factor/")},
                wall_clock_s=float(last["wall_clock_s"]),
                rm_accuracy=float(last["rm_accuracy"]) if "rm_accuracy" in last else None,
                decided={
                    k.removeprefix("decided/"): float(v)
                    for k, v in last.items()
                    if k.startswith("decided/") and isinstance(v, int | float) and math.isfinite(v)
                },
            )
        )
    return rows, plot
