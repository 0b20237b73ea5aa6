"""Vector-reward (MO-Gymnasium) envs: objectives as factors, a utility as the env reward, Pareto-front metrics.

Needs ``pip install -e '.[mo]'``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("mo_gymnasium")
pytest.importorskip("pymoo")

import gymnasium as gym
import mo_gymnasium
import numpy as np
import yaml
from typer.testing import CliRunner

import heron
import heron.envs
from heron.cli import app
from heron.config import validate
from heron.experiments import pareto
from heron.experiments.runner import compare, load_sweep, resolve_method
from heron.experiments.summary import summarize
from heron.report import read_metrics
from heron.sb3.run import resume

DST = "mo-gymnasium:deep-sea-treasure-v0"
SMALL: dict[str, Any] = {
    "reward_model": {"hidden": [16]},
    "comparison": {"pairs": 64},
    "eval": {"episodes": 1},
    "algorithm_kwargs": {"learning_starts": 100, "buffer_size": 1_000},
}


def run_steps(env: gym.Env, vector_env: gym.Env, n: int, seed: int) -> list[tuple[np.ndarray, float, dict[str, float]]]:
    """Step a factorized env and the plain MO env side by side with the same actions."""
    steps = []
    env.reset(seed=seed)
    vector_env.reset(seed=seed)
    env.action_space.seed(seed)
    for _ in range(n):
        action = env.action_space.sample()
        _, reward, terminated, truncated, info = env.step(action)
        _, vector, *_ = vector_env.step(action)
        steps.append((np.asarray(vector, dtype=np.float64), float(reward), info["factors"]))
        if terminated or truncated:
            env.reset()
            vector_env.reset()
    return steps


@pytest.mark.parametrize("env_id", [DST, "mo-gymnasium:minecart-v0", "mo-gymnasium:mo-hopper-v5"])
def test_each_factor_reads_its_own_objective(env_id: str) -> None:
    # A closure over the loop index made every factor of a user's wrapper read the last objective.
    plain = mo_gymnasium.make(env_id.removeprefix("mo-gymnasium:"))
    size = plain.unwrapped.reward_space.shape[0]  # type: ignore[attr-defined]
    names = [f"o{i}" for i in range(size)]
    env = heron.factorize(env_id, objectives=names)
    seen_apart = False
    for vector, reward, factors in run_steps(env, plain, 200, seed=3):
        assert list(factors) == names
        assert [factors[n] for n in names] == vector.tolist()
        assert reward == pytest.approx(vector.sum())  # no utility: the sum
        seen_apart |= len(set(vector.tolist())) > 1
    assert seen_apart  # the components differ at some step, so a mix-up would show


def test_default_names_utility_weights_and_callable() -> None:
    plain = mo_gymnasium.make("deep-sea-treasure-v0")
    env = heron.factorize(mo_gymnasium.make("deep-sea-treasure-v0"), utility=[1.0, 0.25])
    for vector, reward, factors in run_steps(env, plain, 60, seed=0):
        assert factors == {"obj0": vector[0], "obj1": vector[1]}
        assert reward == pytest.approx(vector[0] + 0.25 * vector[1])
    env = heron.factorize(DST, utility=lambda v: float(v.min()))
    for vector, reward, _ in run_steps(env, plain, 30, seed=1):
        assert reward == vector.min()
    spec = heron.factorize(DST, max_episode_steps=7).spec
    assert spec is not None and spec.max_episode_steps == 7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"objectives": ["treasure"]}, "reward space of size 2, got 1 names"),
        ({"objectives": ["a", "b", "c"]}, "reward space of size 2, got 3 names"),
        ({"objectives": ["a", "a"]}, "a name is given twice"),
        ({"utility": [1.0]}, "utility: expected 2 finite weights"),
        ({"utility": [1.0, math.nan]}, "utility: expected 2 finite weights"),
    ],
)
def test_objectives_that_do_not_fit_are_one_line(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(heron.ConfigError, match=message) as err:
        heron.factorize(DST, **kwargs)
    assert "\n" not in str(err.value)


def test_unknown_id_missing_extra_and_scalar_env_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(heron.ConfigError, match=r"unknown MO-Gymnasium environment 'nope-v0'.*heron-rl\[mo\]"):
        heron.factorize("mo-gymnasium:nope-v0")
    with pytest.raises(heron.ConfigError, match="has no vector reward_space"):
        heron.factorize("mo-gymnasium:CartPole-v1")
    with pytest.raises(heron.ConfigError, match="has a scalar reward"):
        heron.factorize("Hopper-v5", objectives=["a"])
    real = heron.envs._importable
    monkeypatch.setattr(heron.envs, "_importable", lambda m: m != "mo_gymnasium" and real(m))
    with pytest.raises(heron.ConfigError, match=rf"^env {DST} needs `pip install 'heron-rl\[mo\]'`$"):
        heron.factorize(DST)


def test_config_moves_objectives_into_env_kwargs_and_ranks_them() -> None:
    cfg = validate({"env": DST, "objectives": ["treasure", "time"], "utility": [1, 0.5]})
    assert cfg.env_kwargs == {"objectives": ["treasure", "time"], "utility": [1, 0.5]}
    assert [(f.name, f.direction) for f in cfg.hierarchy or ()] == [("treasure", "max"), ("time", "max")]
    for data, message in [
        ({"env": "heron/Pendulum-v1", "objectives": ["a"]}, "only for a vector-reward env"),
        ({"env": DST, "objectives": "treasure"}, "objectives: expected a list of names"),
        ({"env": DST, "utility": [1, "x"]}, "utility: expected a list of weights"),
        ({"env": DST, "utility": [1, 2], "env_kwargs": {"utility": [1, 2]}}, "utility: given both"),
    ]:
        with pytest.raises(heron.ConfigError, match=message):
            validate(data)


def test_train_writes_each_objectives_return(tmp_path: Path) -> None:
    result = heron.train(
        DST,
        algorithm="dqn",
        total_timesteps=300,
        out=tmp_path / "run",
        objectives=["treasure", "time"],
        utility=[1.0, 0.5],
        **SMALL,
    )
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert len(rows) == len(result.metrics) > 1
    gamma = result.model.gamma  # type: ignore[attr-defined]
    for row in rows:
        time_return = row["objective/time"]
        assert time_return == row["factor/time"] < 0  # -1 per step
        assert row["return_mean"] == pytest.approx(row["objective/treasure"] + 0.5 * time_return)
        steps = -round(time_return)  # the discounted -1 per step of one episode
        assert row["objective_discounted/time"] == pytest.approx(-(1 - gamma**steps) / (1 - gamma))
        assert math.isfinite(row["objective_discounted/treasure"])
    # The resolved config records the objectives with the env; a resume rebuilds the same columns.
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["env_kwargs"] == {"objectives": ["treasure", "time"], "utility": [1.0, 0.5]}
    assert "objectives" not in saved
    columns = [f"{kind}/{name}" for kind in ("objective", "objective_discounted") for name in ("treasure", "time")]
    resumed = resume(tmp_path / "run").metrics
    assert [[r[c] for c in columns] for r in resumed] == [[r[c] for c in columns] for r in result.metrics]


YAML_RUNS: dict[str, dict[str, Any]] = {
    DST: {"algorithm": "dqn", "total_timesteps": 200, "objectives": ["treasure", "time"]},
    "mo-gymnasium:mo-hopper-v5": {
        "algorithm": "ppo",
        "total_timesteps": 128,
        "objectives": ["forward", "height", "energy"],
        "utility": [1.0, 0.5, 0.1],
        "algorithm_kwargs": {"n_steps": 64, "batch_size": 64},
    },
}


@pytest.mark.parametrize("env_id", list(YAML_RUNS))
def test_yaml_route_trains_with_the_cli(tmp_path: Path, env_id: str) -> None:
    if "hopper" in env_id:
        pytest.importorskip("mujoco")
    settings = {"env": env_id, **SMALL, **YAML_RUNS[env_id]}
    config = tmp_path / "mo.yaml"
    config.write_text(yaml.safe_dump(settings))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    last = read_metrics(out / "metrics.csv")[-1]
    objectives = settings["objectives"]
    for name in objectives:
        for column in (f"objective/{name}", f"objective_discounted/{name}"):
            assert math.isfinite(last[column]), column
    weights = settings.get("utility", [1.0] * len(objectives))
    utility = sum(w * last[f"objective/{n}"] for w, n in zip(weights, objectives, strict=True))
    assert last["return_mean"] == pytest.approx(utility, rel=1e-5, abs=1e-5)


def test_yaml_objectives_that_do_not_fit_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"env": DST, "objectives": ["treasure"]}))
    result = CliRunner().invoke(app, ["train", str(bad), "--out", str(tmp_path / "bad"), "--no-progress"])
    assert result.exit_code == 2 and "reward space of size 2, got 1 names" in result.output


def test_summary_carries_each_objectives_return() -> None:
    rows = [
        {"step": 0.0, "wall_clock_s": 1.0, "return_mean": -5.0, "objective/a": -5.0, "objective_discounted/a": -4.0},
        {"step": 10.0, "wall_clock_s": 2.0, "return_mean": 3.0, "objective/a": 3.0, "objective_discounted/a": 2.5},
    ]
    (row,) = summarize({"heron": [rows, rows]}, None)
    assert row["objective/a"] == 3.0 and row["objective_discounted/a"] == 2.5


def test_hypervolume_expected_utility_and_weights_from_pymoo() -> None:
    points = np.array([[1.0, -1.0], [124.0, -19.0]])
    reference = np.array([0.0, -25.0])
    # Two boxes above (0, -25): 1 x 24 and 124 x 6, overlapping on 1 x 6.
    assert pareto.hypervolume(points, reference) == pytest.approx(24 + 744 - 6)
    assert pareto.hypervolume(np.array([[-1.0, 0.0]]), reference) == 0.0  # not above the reference: nothing
    weights = pareto.equal_weights(2)
    assert weights.shape == (100, 2) and np.allclose(weights.sum(axis=1), 1.0)
    assert pareto.equal_weights(3).shape == (105, 3)  # the Das-Dennis lattice with 13 partitions
    best = np.maximum(weights @ points[0], weights @ points[1])
    assert pareto.expected_utility(points, weights) == pytest.approx(best.mean())


def metrics_row(step: float, point: list[float]) -> dict[str, float]:
    """A metrics.csv row of a DST run whose last evaluation's discounted returns are ``point``."""
    return {
        "step": step,
        "wall_clock_s": 1.0,
        "return_mean": sum(point),
        "objective/treasure": point[0],
        "objective/time": point[1],
        "objective_discounted/treasure": point[0],
        "objective_discounted/time": point[1],
    }


def fake_sweep(env: str, points: dict[str, list[list[float]]], **config: Any) -> tuple[list[Any], dict[str, Any]]:
    """Jobs and curves of a finished sweep, one run per point (no training)."""
    jobs = [SimpleNamespace(method=m, config={"env": env, "algorithm": "dqn", **config}) for m in points]
    curves = {m: [[metrics_row(0, [0.0, -1.0]), metrics_row(10, p)] for p in ps] for m, ps in points.items()}
    return jobs, curves


def test_report_sweep_adds_hypervolume_and_expected_utility(tmp_path: Path) -> None:
    points = {"heron": [[8.0, -3.0], [0.7, -1.0]], "ground-truth": [[8.0, -3.0], [8.0, -3.0]]}
    jobs, curves = fake_sweep(DST, points, algorithm_kwargs={"gamma": 0.9})
    table = summarize(curves, None)
    pareto.report_sweep(jobs, curves, table, tmp_path, "dst", None)
    rows = {r["method"]: r for r in table}
    heron_hv = [8 * 22, 0.7 * 24]  # each point's box above the reference point (0, -25)
    assert rows["heron"]["hypervolume"] == pytest.approx(np.mean(heron_hv))
    assert rows["heron"]["hypervolume_set"] == pytest.approx(8 * 22 + 0.7 * 2)
    assert rows["ground-truth"]["hypervolume_set"] == pytest.approx(8 * 22)
    assert rows["ground-truth"]["hypervolume_ci95"] == 0.0
    assert rows["heron"]["expected_utility_set"] > rows["ground-truth"]["expected_utility_set"]
    saved = json.loads((tmp_path / "pareto.json").read_text())
    assert saved["gamma"] == 0.9 and saved["reference_point"] == [0.0, -25.0]
    assert saved["points"]["heron"] == points["heron"]
    front = np.array(saved["front"])  # the env's front at the agent's gamma: treasure 0.7 is one step away
    assert front.shape == (10, 2) and front[0].tolist() == [0.7, -1.0]
    assert front[1][0] == pytest.approx(8.2 * 0.9**2)
    with (tmp_path / "summary.csv").open() as f:
        header = f.readline().strip().split(",")
    for column in ("hypervolume", "hypervolume_ci95", "hypervolume_set", "expected_utility", "expected_utility_set"):
        assert column in header
    summary = (tmp_path / "summary.md").read_text()
    assert "reference point (0, -25)" in summary and "Pareto front at gamma 0.9 (10 points)" in summary
    assert (tmp_path / "pareto_front.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("env", "settings", "message"),
    [
        (DST, {"reference_point": [0.0]}, r"^pareto.reference_point: expected 2 values \(one per objective"),
        (DST, {"reference_point": [1.0, -25.0]}, "is not below every point of the Pareto front"),
        (DST, {"reference_point": [0.0, math.inf]}, "expected finite numbers"),
        (DST, {"weights": 0}, "pareto.weights: expected a positive integer"),
        (DST, {"origin": [0, 0]}, "pareto.origin: unknown setting"),
        ("mo-gymnasium:mo-mountaincar-v0", {"front": True}, "env mo-gymnasium:mo-mountaincar-v0 publishes no Pareto"),
    ],
)
def test_bad_reference_point_or_no_front_is_one_line(
    tmp_path: Path, env: str, settings: dict[str, Any], message: str
) -> None:
    jobs, curves = fake_sweep(env, {"heron": [[1.0, -2.0]]})
    with pytest.raises(heron.ConfigError, match=message) as err:
        pareto.report_sweep(jobs, curves, summarize(curves, None), tmp_path, "t", None, settings)
    assert "\n" not in str(err.value)


def test_env_without_front_gets_expected_utility_and_no_front(tmp_path: Path) -> None:
    jobs, curves = fake_sweep("mo-gymnasium:mo-mountaincar-v0", {"heron": [[1.0, -2.0]]})
    table = summarize(curves, None)
    pareto.report_sweep(jobs, curves, table, tmp_path, "t", None)  # no documented reference point, no front
    assert "hypervolume" not in table[0] and table[0]["expected_utility_set"] == pytest.approx(-0.5)
    assert json.loads((tmp_path / "pareto.json").read_text())["front"] is None
    pareto.report_sweep(jobs, curves, table, tmp_path, "t", None, {"reference_point": [0, -3]})
    assert table[0]["hypervolume"] == pytest.approx(1.0)


def test_heron_swap_resolves_on_mo_configs() -> None:
    base = {"env": DST, "objectives": ["treasure", "time"], "utility": [1.0, 1.0]}
    swapped = resolve_method(base, "heron-swap", {})
    assert [f["name"] for f in swapped["hierarchy"]] == ["time", "treasure"]
    configs = Path(__file__).parents[1] / "configs"
    for name, first in [("mo-deep-sea-treasure", "time"), ("mo-minecart", "ore2"), ("mo-hopper", "height")]:
        base, variants, *_ = load_sweep(configs / f"{name}.yaml")
        assert resolve_method(base, "heron-swap", variants)["hierarchy"][0]["name"] == first


def test_tiny_compare_reports_the_front(tmp_path: Path) -> None:
    config = tmp_path / "dst.yaml"
    settings = {**SMALL, "env": DST, "algorithm": "dqn", "total_timesteps": 100, "objectives": ["treasure", "time"]}
    config.write_text(yaml.safe_dump({**settings, "eval": {"every": 100, "episodes": 1}}))
    out = tmp_path / "sweep"
    result = compare(config, ["ground-truth"], 1, out, workers=1, progress=False)
    assert [o.status for o in result.outcomes] == ["done"]
    saved = json.loads((out / "pareto.json").read_text())
    for row in result.table:
        (point,) = saved["points"][row["method"]]
        last = read_metrics(out / "runs" / str(row["method"]) / "seed0" / "metrics.csv")[-1]
        assert point == [last["objective_discounted/treasure"], last["objective_discounted/time"]]
        assert row["hypervolume"] == pytest.approx(pareto.hypervolume(np.array([point]), np.array([0.0, -25.0])))
        assert math.isfinite(float(row["expected_utility"]))  # type: ignore[arg-type]
    assert saved["gamma"] == 0.99  # DQN's default, the front's gamma
    assert "hypervolume_set" in (out / "summary.md").read_text()
    assert (out / "pareto_front.png").stat().st_size > 0


def test_pareto_section_of_a_compare_config_is_read_and_checked_before_any_run(tmp_path: Path) -> None:
    settings = {**SMALL, "env": DST, "algorithm": "dqn", "total_timesteps": 100, "objectives": ["treasure", "time"]}
    config = tmp_path / "dst.yaml"
    config.write_text(yaml.safe_dump({**settings, "pareto": {"weights": 0}}))
    with pytest.raises(heron.ConfigError, match=r"pareto\.weights: expected a positive integer"):
        compare(config, ["ground-truth"], 1, tmp_path / "sweep", workers=1, progress=False)
    assert not (tmp_path / "sweep").exists()
    config.write_text(yaml.safe_dump({**settings, "pareto": {"reference_point": [0, -30]}}))
    assert load_sweep(config).pareto == {"reference_point": [0, -30]}
