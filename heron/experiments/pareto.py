"""Pareto-front metrics and plot of a sweep on a vector-reward env: hypervolume, expected utility, where policies land.

A policy's point is its last evaluation's discounted return per objective (``objective_discounted/<name>``
of ``metrics.csv``, discounted by the agent's ``gamma``), so it is comparable with the env's Pareto front
at that same ``gamma`` (MO-Gymnasium's ``env.unwrapped.pareto_front(gamma)``; MORL-Baselines measures
discounted returns the same way). Hypervolume is pymoo's (``pymoo.indicators.hv.HV``, the exact
algorithms of moocore); the weights of expected utility are pymoo's Das-Dennis lattice, equally spaced
on the simplex. Expected utility (Zintgraf et al., 2015, as in MORL-Baselines) is the mean over those
weights of the best weighted sum among the points.

Per method, each seed's policy is one point: ``hypervolume`` and ``expected_utility`` are the mean and
95% CI over seeds of each point alone, ``hypervolume_set`` and ``expected_utility_set`` those of all the
seeds' points together (the front the method's runs found between them).
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from matplotlib.figure import Figure

from heron.envs import MO_PREFIX, make_env
from heron.errors import ConfigError
from heron.experiments.summary import write_summary
from heron.report import Curves, mean_ci

REFERENCE_POINTS: dict[str, tuple[float, ...]] = {
    # MORL-Baselines' reference points (its examples and benchmark launcher) for these envs.
    "deep-sea-treasure-v0": (0.0, -25.0),
    "deep-sea-treasure-concave-v0": (0.0, -25.0),
    "minecart-v0": (-1.0, -1.0, -200.0),
    "minecart-deterministic-v0": (-1.0, -1.0, -200.0),
    "mo-hopper-v4": (-100.0, -100.0, -100.0),
    "mo-hopper-v5": (-100.0, -100.0, -100.0),
    "mo-hopper-2d-v4": (-100.0, -100.0),
    "mo-hopper-2obj-v5": (-100.0, -100.0),
}
"""``{MO-Gymnasium id: reference point}``, in the env's objective order."""

NADIR_MARGIN = 0.1
"""An env with a front and no reference point above: the front's nadir minus this share of its range
in each objective (minus 1 where the front does not vary)."""

WEIGHTS = 100
"""Expected utility averages over at least this many weights (the Das-Dennis lattice: 100 for 2
objectives, 105 for 3)."""


class _Job(Protocol):
    """A run of the sweep (:class:`heron.experiments.runner.Job`)."""

    @property
    def config(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Settings:
    """What to measure a sweep's policies against.

    :param reference_point: the point hypervolume is measured from, one value per objective in the
        env's order (None: :data:`REFERENCE_POINTS`, else the front's nadir minus a margin).
    :param front: True: the env must publish a Pareto front; False: do not use it; None: use it when
        the env has one.
    :param weights: at least this many weights for expected utility.
    """

    reference_point: tuple[float, ...] | None = None
    front: bool | None = None
    weights: int = WEIGHTS


def settings(data: Settings | Mapping[str, Any] | None) -> Settings:
    """:class:`Settings` from a mapping of its keys (a config's ``pareto`` section), or its defaults."""
    if isinstance(data, Settings):
        return data
    if data is None:
        return Settings()
    if not isinstance(data, Mapping):
        raise ConfigError(f"pareto: expected a mapping of settings, got {type(data).__name__}")
    unknown = set(data) - {"reference_point", "front", "weights"}
    if unknown:
        raise ConfigError(f"pareto.{sorted(unknown)[0]}: unknown setting (reference_point, front, weights)")
    reference = data.get("reference_point")
    if reference is not None:
        if isinstance(reference, str | bytes) or not isinstance(reference, Sequence):
            raise ConfigError(f"pareto.reference_point: expected a list of numbers, got {reference!r}")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in reference):
            raise ConfigError(f"pareto.reference_point: expected finite numbers, got {list(reference)!r}")
        reference = tuple(float(v) for v in reference)
    front = data.get("front")
    if front is not None and not isinstance(front, bool):
        raise ConfigError(f"pareto.front: expected true or false, got {front!r}")
    weights = data.get("weights", WEIGHTS)
    if isinstance(weights, bool) or not isinstance(weights, int) or weights < 1:
        raise ConfigError(f"pareto.weights: expected a positive integer, got {weights!r}")
    return Settings(reference, front, weights)


def hypervolume(points: np.ndarray, reference_point: np.ndarray) -> float:
    """Hypervolume of ``points`` (rows, every objective maximized) above ``reference_point`` (pymoo)."""
    from pymoo.indicators.hv import HV

    return float(HV(ref_point=-reference_point)(-np.asarray(points, dtype=np.float64)))


def equal_weights(dim: int, at_least: int = WEIGHTS) -> np.ndarray:
    """Weights equally spaced on the simplex: pymoo's Das-Dennis lattice of at least ``at_least`` points."""
    from pymoo.util.ref_dirs import get_reference_directions

    partitions = 1
    while math.comb(partitions + dim - 1, dim - 1) < at_least:
        partitions += 1
    return np.asarray(get_reference_directions("das-dennis", dim, n_partitions=partitions), dtype=np.float64)


def expected_utility(points: np.ndarray, weights: np.ndarray) -> float:
    """Mean over ``weights`` (rows) of the best weighted sum among ``points`` (rows)."""
    return float((weights @ np.asarray(points, dtype=np.float64).T).max(axis=1).mean())


def pareto_front(env_id: str, env_kwargs: Mapping[str, Any], gamma: float) -> np.ndarray | None:
    """The env's Pareto front at ``gamma`` (rows, the env's objective order), or None when it publishes none."""
    env = make_env(env_id, **env_kwargs)
    try:
        front_fn = getattr(env.unwrapped, "pareto_front", None)
        if not callable(front_fn):
            return None
        return np.asarray(front_fn(gamma), dtype=np.float64).reshape(-1, _size(env))
    finally:
        env.close()


def _size(env: Any) -> int:
    return int(env.unwrapped.reward_space.shape[0])


def reference_point(
    env_id: str, size: int, front: np.ndarray | None, given: tuple[float, ...] | None
) -> np.ndarray | None:
    """The reference point: given, else the env's documented one, else the front's nadir minus a margin
    (None for an env with neither a documented point nor a front).

    :raises ConfigError: for a point of the wrong size, or one not below every point of the front.
    """
    name = env_id.removeprefix(MO_PREFIX)
    if given is None and name in REFERENCE_POINTS:
        given = REFERENCE_POINTS[name]
    if given is None:
        if front is None:
            return None
        low, high = front.min(axis=0), front.max(axis=0)
        return low - np.where(high > low, NADIR_MARGIN * (high - low), 1.0)
    point = np.asarray(given, dtype=np.float64)
    if point.shape != (size,):
        raise ConfigError(
            f"pareto.reference_point: expected {size} values (one per objective of {env_id}), got {list(given)}"
        )
    if front is not None and not np.all(front > point):
        raise ConfigError(
            f"pareto.reference_point: {list(given)} is not below every point of the Pareto front of {env_id}"
            f" (front minimum per objective: {front.min(axis=0).round(3).tolist()})"
        )
    return point


def _gamma(config: Mapping[str, Any]) -> float:
    """The agent's discount: the config's ``algorithm_kwargs.gamma``, else the SB3 class default."""
    from heron.sb3.run import ALGORITHMS

    kwargs = config.get("algorithm_kwargs") or {}
    if "gamma" in kwargs:
        return float(kwargs["gamma"])
    algorithm = ALGORITHMS[str(config.get("algorithm", "ppo")).lower()]
    return float(inspect.signature(algorithm.__init__).parameters["gamma"].default)


def final_points(runs: Sequence[Sequence[Mapping[str, float]]]) -> tuple[list[str], np.ndarray]:
    """The objectives and one row per run: the discounted return of each objective at its last evaluation."""
    columns = [k for k in runs[0][-1] if k.startswith("objective_discounted/")] if runs else []
    return [c.removeprefix("objective_discounted/") for c in columns], np.array(
        [[rows[-1][c] for c in columns] for rows in runs], dtype=np.float64
    ).reshape(len(runs), len(columns))


def report_sweep(
    jobs: Sequence[_Job],
    curves: Curves,
    table: list[dict[str, object]],
    out: Path,
    title: str,
    threshold: float | None,
    pareto: Settings | Mapping[str, Any] | None = None,
) -> None:
    """Hypervolume and expected utility of each method's policies, added to ``table`` and the summary files,
    ``pareto.json`` (the front, the reference point, every point) and ``pareto_front.png``.

    Does nothing for a sweep whose runs report no objectives (a scalar-reward env); asking ``pareto``
    for a front or a reference point there is an error.

    :param jobs: the sweep's runs (their configs give the env and the agent's ``gamma``).
    :param curves: method -> one metrics table per seed.
    :param table: the summary rows (one per method); gains the metrics' columns.
    :param pareto: :class:`Settings` or a mapping of its keys.
    :raises ConfigError: for bad settings, a front asked of an env without one, or methods whose
        discounts differ.
    """
    chosen = settings(pareto)
    config = jobs[0].config
    env_id = str(config["env"])
    runs = {m: [rows for rows in r if rows] for m, r in curves.items()}
    objectives, _ = final_points(next((r for r in runs.values() if r), []))
    if not objectives:
        if chosen.front or chosen.reference_point is not None:
            raise ConfigError(f"pareto: env {env_id} reports no objectives (not a vector-reward env)")
        return
    if importlib.util.find_spec("pymoo") is None:
        raise ConfigError(f"pareto: hypervolume and expected utility of env {env_id} need `pip install 'heron-rl[mo]'`")
    gammas = {_gamma(job.config) for job in jobs}
    if len(gammas) > 1:
        raise ConfigError(f"pareto: the methods discount with different gammas ({sorted(gammas)}): not comparable")
    (gamma,) = gammas
    env_kwargs = dict(config.get("env_kwargs") or {})
    front = None if chosen.front is False else pareto_front(env_id, env_kwargs, gamma)
    if chosen.front and front is None:
        raise ConfigError(f"pareto.front: env {env_id} publishes no Pareto front (env.unwrapped.pareto_front)")
    reference = reference_point(env_id, len(objectives), front, chosen.reference_point)
    weights = equal_weights(len(objectives), chosen.weights)
    points = {m: final_points(r)[1] for m, r in runs.items() if r}
    for row in table:
        method_points = points.get(str(row["method"]))
        if method_points is None:
            continue
        if reference is not None:
            row["hypervolume"], row["hypervolume_ci95"] = mean_ci(
                [hypervolume(p[None], reference) for p in method_points]
            )
            row["hypervolume_set"] = hypervolume(method_points, reference)
        row["expected_utility"], row["expected_utility_ci95"] = mean_ci(
            [expected_utility(p[None], weights) for p in method_points]
        )
        row["expected_utility_set"] = expected_utility(method_points, weights)
    where = (
        "no hypervolume (no reference point known for this env: give pareto.reference_point)"
        if reference is None
        else f"reference point ({', '.join(f'{v:g}' for v in reference)})"
    )
    notes = [
        f"Hypervolume and expected utility: each policy's discounted return per objective ({', '.join(objectives)};"
        f" gamma {gamma:g}), {where}, {len(weights)} equally spaced weights; `hypervolume`, `expected_utility`:"
        " each seed's policy alone (mean ± 95% CI); `*_set`: all seeds' policies together.",
    ]
    if front is not None and reference is not None:
        notes.append(
            f"The env's Pareto front at gamma {gamma:g} ({len(front)} points): hypervolume"
            f" {hypervolume(front, reference):.6g}, expected utility {expected_utility(front, weights):.6g}."
        )
    write_summary(table, out, title, threshold, notes)
    (out / "pareto.json").write_text(
        json.dumps(
            {
                "env": env_id,
                "objectives": objectives,
                "gamma": gamma,
                "reference_point": None if reference is None else reference.tolist(),
                "weights": len(weights),
                "front": None if front is None else front.tolist(),
                "points": {m: p.tolist() for m, p in points.items()},
            },
            indent=1,
        )
    )
    plot_front(points, front, reference, objectives, out / "pareto_front.png", f"{title} (discounted, gamma {gamma:g})")


def plot_front(
    points: Mapping[str, np.ndarray],
    front: np.ndarray | None,
    reference: np.ndarray | None,
    objectives: Sequence[str],
    path: Path,
    title: str,
) -> None:
    """Each method's policies (one point per seed) against the Pareto front: one panel per pair of objectives."""
    pairs = list(itertools.combinations(range(len(objectives)), 2))
    cols = min(len(pairs), 3)
    rows = -(-len(pairs) // cols)
    fig = Figure(figsize=(max(4.6 * cols, 6.0), 4.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    for ax, (i, j) in zip(axes, pairs, strict=False):
        if front is not None:
            order = np.argsort(front[:, i])
            style = "-" if len(objectives) == 2 else ""  # a 2-D front is a staircase of points; a projection is not
            ax.plot(front[order, i], front[order, j], f"{style}o", color="0.6", ms=4, label="Pareto front")
        if reference is not None:
            ax.plot(reference[i], reference[j], "kx", label="reference point")
        for k, (method, p) in enumerate(points.items()):  # shrinking markers: coinciding policies stay visible
            marker, size = "os^Dv"[k % 5], max(70 - 18 * k, 14)
            ax.scatter(p[:, i], p[:, j], s=size, marker=marker, alpha=0.75, label=f"{method} (n={len(p)})")
        ax.set_xlabel(objectives[i])
        ax.set_ylabel(objectives[j])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
