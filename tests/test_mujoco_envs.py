"""The factorized MuJoCo robots and heron.factorize (needs ``pip install -e '.[mujoco]'``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mujoco")

import gymnasium as gym
import numpy as np
from typer.testing import CliRunner

import heron
import heron.envs.mujoco
from heron.cli import app
from heron.envs import REGISTRY

ROBOTS = {
    "heron/HalfCheetah-v5": ["progress", "control_cost"],
    "heron/Hopper-v5": ["progress", "alive", "control_cost"],
    "heron/Ant-v5": ["progress", "alive", "control_cost", "contact_cost"],
}
RANKINGS = {
    "heron/HalfCheetah-v5": [("progress", "max", 0.5), ("control_cost", "min", 0.1)],
    "heron/Hopper-v5": [("progress", "max", 0.1), ("alive", "max", 0.2), ("control_cost", "min", 0.5)],
    "heron/Ant-v5": [
        ("alive", "max", 1.0),
        ("progress", "max", 0.5),
        ("control_cost", "min", 0.5),
        ("contact_cost", "min", 0.5),
    ],
}
SIGNS = {"progress": 1.0, "alive": 1.0, "control_cost": -1.0, "contact_cost": -1.0}


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MuJoCo writes its warnings (HalfCheetah-v5: a deprecated settotalmass) to ./MUJOCO_LOG.TXT."""
    monkeypatch.chdir(tmp_path)


def random_steps(env: gym.Env, steps: int = 300, seed: int = 0) -> list[tuple[float, dict[str, float]]]:
    """(env reward, factors) of random steps, resetting on termination."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    out = []
    for _ in range(steps):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        out.append((float(reward), dict(info["factors"])))
        if terminated or truncated:
            env.reset()
    env.close()
    return out


@pytest.mark.parametrize("env_id", list(ROBOTS))
def test_robot_factors_sum_to_env_reward(env_id: str) -> None:
    assert REGISTRY[env_id].factors == tuple(ROBOTS[env_id])
    for reward, factors in random_steps(gym.make(env_id)):
        assert list(factors) == ROBOTS[env_id]
        assert all(math.isfinite(v) for v in factors.values())
        assert sum(SIGNS[k] * v for k, v in factors.items()) == pytest.approx(reward, abs=1e-5)
        assert factors["control_cost"] >= 0 and factors.get("contact_cost", 0.0) >= 0


def test_robot_make_kwargs_reach_the_mujoco_env() -> None:
    env = gym.make("heron/HalfCheetah-v5", ctrl_cost_weight=0.0)
    assert all(f["control_cost"] == 0.0 for _, f in random_steps(env, steps=20))


@pytest.mark.parametrize(
    ("make", "names"),
    [
        (lambda: heron.factorize("Walker2d-v5"), {"forward", "survive", "ctrl"}),
        (lambda: heron.factorize(gym.make("Swimmer-v5")), {"forward", "ctrl"}),
    ],
    ids=["Walker2d-v5", "Swimmer-v5"],
)
def test_factorize_sums_to_env_reward(make: Any, names: set[str]) -> None:
    for reward, factors in random_steps(make()):
        assert set(factors) == names
        assert sum(factors.values()) == pytest.approx(reward, abs=1e-5)


class NoRewardInfo(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: Any) -> Any:
        return np.zeros(1, dtype=np.float32), 1.0, False, False, {"factors": {"own": 2.0}}


class OwnRewardInfo(NoRewardInfo):
    def step(self, action: Any) -> Any:
        info = {"reward_gain": 1.5, "reward_own": 9.0, "factors": {"own": 2.0}}
        return np.zeros(1, dtype=np.float32), 1.5, False, False, info


def test_factorize_keeps_reported_factors_and_rejects_envs_without_reward_info() -> None:
    env = heron.factorize(OwnRewardInfo())
    env.reset(seed=0)
    _, reward, *_, info = env.step(0)
    assert reward == 1.5 and info["factors"] == {"gain": 1.5, "own": 2.0}
    bare = heron.factorize(NoRewardInfo())
    bare.reset(seed=0)
    with pytest.raises(heron.FactorError, match="env NoRewardInfo reports no reward_\\* entries"):
        bare.step(0)
    with pytest.raises(heron.ConfigError, match="only apply to an env id"):
        heron.factorize(NoRewardInfo(), render_mode="rgb_array")


def test_cli_lists_the_robots() -> None:
    result = CliRunner().invoke(app, ["envs", "--json"])
    assert result.exit_code == 0
    envs = {e["id"]: e for e in json.loads(result.stdout)}
    for env_id, factors in ROBOTS.items():
        assert envs[env_id]["factors"] == factors
        ranking = [(f["name"], f["direction"], f["margin"]) for f in envs[env_id]["hierarchy"]]
        assert ranking == RANKINGS[env_id]
        assert {f["margin_mode"] for f in envs[env_id]["hierarchy"]} == {"std"}
        assert REGISTRY[env_id].extra == "mujoco"


def test_missing_extra_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(**kwargs: Any) -> gym.Env:
        raise gym.error.DependencyNotInstalled('MuJoCo is not installed, run `pip install "gymnasium[mujoco]"`')

    monkeypatch.setattr(heron.envs.mujoco, "make_hopper", missing)
    with pytest.raises(heron.ConfigError, match=r"^env heron/Hopper-v5 needs `pip install heron-rl\[mujoco\]`$"):
        heron.train("heron/Hopper-v5", total_timesteps=64)


def test_hopper_trains_briefly() -> None:
    result = heron.train(
        "heron/Hopper-v5",
        algorithm="ppo",
        total_timesteps=1024,
        algorithm_kwargs={"n_steps": 512, "batch_size": 64},
        reward_model={"hidden": [32, 32]},
        eval={"episodes": 1},
    )
    assert result.metrics[-1]["step"] == 1024
    assert all(math.isfinite(row["factor/progress"]) for row in result.metrics)
