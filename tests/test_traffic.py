"""SUMO traffic signal control and slot vectorization (needs ``pip install -e '.[traffic]'``)."""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sumo")
pytest.importorskip("sumo_rl")

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding

import heron
import heron.envs.traffic
from heron.envs import REGISTRY
from heron.envs.traffic import TrafficEnv, _backend, _nets
from heron.sb3.vec_env import SlotVecEnv

FACTORS = ["queue", "waiting_time", "delay", "throughput", "switches", "safety"]
DIRECTIONS = ["min", "min", "min", "max", "min", "min"]
NETWORKS = {"heron/TrafficSingle-v0": 1, "heron/TrafficGrid2x2-v0": 4, "heron/TrafficCologne8-v0": 8}
SINGLE = "heron/TrafficSingle-v0"
GRID = "heron/TrafficGrid2x2-v0"


def run_episode(env: gym.Env, seed: int, actions: np.ndarray | None = None) -> list[tuple[float, dict[str, Any]]]:
    """(reward, info) of every step of one episode, with random (or the given) actions."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    out, t, done = [], 0, False
    while not done:
        action = env.action_space.sample() if actions is None else actions[t % len(actions)]
        _, reward, terminated, truncated, info = env.step(action)
        assert not terminated
        out.append((float(reward), info))
        t, done = t + 1, truncated
    return out


@pytest.mark.parametrize("env_id", list(NETWORKS))
def test_network_reports_factors_per_slot_and_summed(env_id: str) -> None:
    n = NETWORKS[env_id]
    env = gym.make(env_id, num_seconds=300)
    info = REGISTRY[env_id]
    assert info.factors == tuple(FACTORS) and info.extra == "traffic"
    assert [(f.name, f.direction) for f in info.hierarchy.factors] == list(zip(FACTORS, DIRECTIONS, strict=True))
    assert env.unwrapped.num_slots == n
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape and obs.shape[0] == n and obs.dtype == np.float32
    assert env.action_space == spaces.MultiDiscrete([env.unwrapped.green_phases.max()] * n)
    steps = run_episode(env, seed=0)
    env.close()
    assert len(steps) == 300 // 5
    for reward, info in steps:
        assert list(info["factors"]) == FACTORS
        assert len(info["slot_factors"]) == len(info["slot_rewards"]) == n
        slot = np.array([[f[k] for k in FACTORS] for f in info["slot_factors"]])
        assert np.isfinite(slot).all() and (slot >= 0).all() and (slot[:, 2] <= 1).all()
        assert set(slot[:, 4]) <= {0.0, 1.0}
        np.testing.assert_allclose(slot.sum(axis=0), [info["factors"][k] for k in FACTORS], atol=1e-9)
        assert reward == pytest.approx(sum(info["slot_rewards"]))
    totals = {k: sum(info["factors"][k] for _, info in steps) for k in FACTORS}
    assert totals["queue"] > 0 and totals["throughput"] > 0 and totals["waiting_time"] > 0


def test_backends_agree_and_seeds_reproduce() -> None:
    """TraCI and libsumo run the same simulation; a seed fixes it, also on a reused simulator."""
    actions = np.array([[0], [1], [1], [0], [1]])
    envs = {backend: gym.make(SINGLE, num_seconds=200, backend=backend) for backend in ("libsumo", "traci")}
    runs = [
        np.array([[r, *info["factors"].values()] for r, info in run_episode(envs[backend], 3, actions)])
        for backend in ("libsumo", "traci", "libsumo")
    ]
    for env in envs.values():
        env.close()
    np.testing.assert_array_equal(runs[0], runs[2])
    np.testing.assert_allclose(runs[0], runs[1], rtol=1e-9, atol=1e-12)  # TraCI sends doubles: equal to an ulp
    assert runs[0][:, 1 + FACTORS.index("switches")].sum() > 0


def test_matches_sumo_rl_observation_and_reward() -> None:
    """Same SUMO seed and actions: sumo-rl's observation and diff-waiting-time reward, exactly."""
    from sumo_rl import SumoEnvironment

    net = _nets() / "single-intersection"
    files = {
        "net_file": str(net / "single-intersection.net.xml"),
        "route_file": str(net / "single-intersection.rou.xml"),
    }
    ours = TrafficEnv(**files, num_seconds=300)
    obs, _ = ours.reset(seed=5)
    sumo_seed = int(seeding.np_random(5)[0].integers(2**31 - 1))  # the env draws SUMO's seed from its RNG
    theirs = SumoEnvironment(**files, num_seconds=300, sumo_seed=sumo_seed, single_agent=True, sumo_warnings=False)
    expected, _ = theirs.reset()
    np.testing.assert_array_equal(obs[0], expected)
    for action in np.random.default_rng(0).integers(0, 2, 60):
        obs, reward, *_ = ours.step(np.array([action]))
        expected, expected_reward, *_ = theirs.step(int(action))
        np.testing.assert_array_equal(obs[0], expected)
        assert reward == pytest.approx(expected_reward, abs=1e-12)
    ours.close()
    theirs.close()


def test_actions_wrap_modulo_each_lights_green_phases() -> None:
    env = gym.make("heron/TrafficCologne8-v0", num_seconds=60)
    greens = env.unwrapped.green_phases
    assert len(set(greens.tolist())) > 1  # heterogeneous intersections, padded observation rows
    env.reset(seed=0)
    n = len(greens)
    for _ in range(2):  # past min_green + yellow_time
        env.step(np.zeros(n, dtype=np.int64))
    target = np.full(n, 3)
    obs, *_, info = env.step(target)
    env.close()
    chosen = [int(np.argmax(obs[k, : greens[k]])) for k in range(n)]
    assert chosen == (target % greens).tolist()
    assert [f["switches"] for f in info["slot_factors"]] == [float(c != 0) for c in chosen]


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["dies", "hangs"])
def test_simulator_fault_cuts_the_episode_and_restarts(fault: signal.Signals) -> None:
    env = gym.make(GRID, num_seconds=300, step_timeout=2.0)
    sim: TrafficEnv = env.unwrapped
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        obs, *_ = env.step(env.action_space.sample())
    pid = sim.sim_pid
    os.kill(pid, fault)
    after, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert info["sim_restarted"] and truncated and not terminated and reward == 0.0
    np.testing.assert_array_equal(after, obs)
    assert list(info["factors"]) == FACTORS and len(info["slot_rewards"]) == sim.num_slots
    # Nothing was measured in that step: every factor is missing, not 0 (the best value of a cost).
    assert all(math.isnan(v) for slot in info["slot_factors"] for v in slot.values())
    assert sim.sim_pid != pid
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert len(run_episode(env, seed=1)) == 300 // 5
    env.close()


def test_training_continues_through_a_simulator_crash() -> None:
    restarts: list[bool] = []

    class CrashOnce(gym.Wrapper):
        """Kills the simulator before the env's 15th step."""

        def __init__(self, env: gym.Env) -> None:
            super().__init__(env)
            self.t = 0

        def step(self, action: Any) -> Any:
            self.t += 1
            if self.t == 15:
                os.kill(self.env.unwrapped.sim_pid, signal.SIGKILL)
            out = self.env.step(action)
            restarts.append(out[-1].get("sim_restarted", False))
            return out

    result = heron.train(
        lambda: CrashOnce(gym.make(GRID, num_seconds=100)),
        REGISTRY[GRID].hierarchy,
        total_timesteps=160,
        algorithm_kwargs={"n_steps": 20, "batch_size": 40},
        eval={"every": 160, "episodes": 1},
    )
    assert sum(restarts) == 2  # the training env and the evaluation env
    assert result.metrics[-1]["step"] == 160 and result.metrics[-1]["pairs_labeled"] > 0
    assert result.metrics[-1]["nonfinite_steps"] == 4  # the restart step of each of the grid's 4 lights


class Slotted(gym.Env):
    """Three slots with Box actions: slot i's reward is its action plus i, its factor the action."""

    num_slots = 3
    observation_space = spaces.Box(-1.0, 1.0, (3, 2), dtype=np.float32)
    action_space = spaces.Box(-1.0, 1.0, (3, 1), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros((3, 2), dtype=np.float32), {}

    def step(self, action: Any) -> Any:
        self.t += 1
        a = np.asarray(action, dtype=np.float64).reshape(3)
        rewards = (a + np.arange(3)).tolist()
        info = {
            "factors": {"gain": float(a.sum())},
            "slot_factors": [{"gain": float(x)} for x in a],
            "slot_rewards": rewards,
            "note": "shared",
        }
        return np.full((3, 2), self.t / 10, dtype=np.float32), sum(rewards), False, self.t == 4, info


def test_slot_vec_env_contract() -> None:
    venv = SlotVecEnv(Slotted())
    assert venv.num_envs == 3 and venv.get_attr("num_slots") == [3, 3, 3]
    assert venv.observation_space.shape == (2,) and venv.action_space.shape == (1,)
    assert venv.reset().shape == (3, 2)
    actions = np.array([[0.5], [0.0], [-0.5]], dtype=np.float32)
    for t in range(1, 5):
        obs, rewards, dones, infos = venv.step(actions)
        np.testing.assert_allclose(rewards, [0.5, 1.0, 1.5])
        assert [i["factors"] for i in infos] == [{"gain": 0.5}, {"gain": 0.0}, {"gain": -0.5}]
        assert all(i["note"] == "shared" for i in infos)
        assert dones.tolist() == [t == 4] * 3
    np.testing.assert_array_equal(obs, np.zeros((3, 2)))  # reset after the episode
    for i, info in enumerate(infos):
        np.testing.assert_allclose(info["terminal_observation"], [0.4, 0.4])
        assert info["TimeLimit.truncated"] is True
        assert info["episode"]["r"] == pytest.approx(4 * (0.5 + 0.5 * i)) and info["episode"]["l"] == 4
    with pytest.raises(heron.ConfigError, match=r"^n_envs: must be 1 for an env with slots"):
        heron.train(Slotted, [heron.Factor("gain")], total_timesteps=8, n_envs=2)
    uneven = Slotted()
    uneven.action_space = spaces.MultiDiscrete([2, 3, 2])
    with pytest.raises(heron.ConfigError, match=r"^slots: the action space must be a MultiDiscrete of 3 equal sizes"):
        SlotVecEnv(uneven)


def test_slot_vec_env_on_a_network() -> None:
    venv = SlotVecEnv(gym.make(GRID, num_seconds=50))
    assert venv.num_envs == 4 and venv.action_space == spaces.Discrete(4)
    obs = venv.reset()
    assert obs.shape == (4, venv.observation_space.shape[0])
    for t in range(1, 11):
        obs, rewards, dones, infos = venv.step(np.array([0, 1, 2, 3]))
        assert rewards.shape == (4,) and [list(i["factors"]) for i in infos] == [FACTORS] * 4
        assert dones.tolist() == [t == 10] * 4
    assert all(i["TimeLimit.truncated"] and i["episode"]["l"] == 10 for i in infos)
    assert all(i["terminal_observation"].shape == obs.shape[1:] for i in infos)
    venv.close()


def _train(env_id: str, algorithm: str = "ppo", **extra: Any) -> heron.TrainResult:
    """Two 20-step episodes per intersection; one evaluation at the end."""
    n = NETWORKS.get(env_id, 4)
    kwargs = (
        {"n_steps": 20, "batch_size": 10 * n}
        if algorithm == "ppo"
        else {"learning_starts": 10 * n, "buffer_size": 1000, "train_freq": 4}
    )
    return heron.train(
        env_id,
        algorithm=algorithm,
        total_timesteps=40 * n,
        algorithm_kwargs=kwargs,
        reward_model={"hidden": [32, 32]},
        comparison={"pairs": 256},
        eval={"every": 40 * n, "episodes": 1},
        **{"env_kwargs": {"num_seconds": 100}, **extra},
    )


@pytest.mark.parametrize(
    ("env_id", "algorithm"),
    [(SINGLE, "ppo"), (GRID, "ppo"), ("heron/TrafficCologne8-v0", "ppo"), (GRID, "dqn")],
)
def test_heron_trains_one_policy_for_all_intersections(env_id: str, algorithm: str) -> None:
    result = _train(env_id, algorithm)
    n = NETWORKS[env_id]
    venv = result.model.get_env()
    assert venv.num_envs == n and isinstance(venv.unwrapped, SlotVecEnv)
    assert result.model.action_space == spaces.Discrete(int(venv.unwrapped.env.unwrapped.green_phases.max()))
    last = result.metrics[-1]
    assert last["step"] == 40 * n
    assert all(math.isfinite(last[f"factor/{k}"]) for k in FACTORS) and math.isfinite(last["return_mean"])
    assert last["pairs_labeled"] > 0


def test_bring_your_own_network(tmp_path: Path) -> None:
    nets = _nets() / "2x2grid"
    files = {"net_file": str(nets / "2x2.net.xml"), "route_file": str(nets / "2x2.rou.xml")}
    result = _train("heron/Traffic-v0", env_kwargs={**files, "num_seconds": 100})
    assert result.metrics[-1]["step"] == 160
    env = TrafficEnv(**files, num_seconds=20)
    clone = copy.deepcopy(env)
    assert clone.sim_pid != env.sim_pid and clone.num_slots == 4
    assert len(run_episode(clone, seed=0)) == len(run_episode(env, seed=0)) == 4
    clone.close()
    env.close()
    with pytest.raises(heron.ConfigError, match=r"^env_kwargs: heron/Traffic-v0 needs net_file and route_file$"):
        heron.train("heron/Traffic-v0", total_timesteps=8)
    with pytest.raises(heron.ConfigError, match=r"^net_file: no such file '.*missing.net.xml'$"):
        heron.train("heron/Traffic-v0", total_timesteps=8, env_kwargs={**files, "net_file": "missing.net.xml"})
    with pytest.raises(heron.ConfigError, match=r"^yellow_time: must be below delta_time \(5\), got 5$"):
        TrafficEnv(**files, yellow_time=5)
    with pytest.raises(heron.ConfigError, match=r"^net_file: .*2x2.rou.xml: simulator: "):
        TrafficEnv(files["route_file"], files["route_file"])


def test_missing_extra_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Path:
        raise gym.error.DependencyNotInstalled("sumo-rl is not installed")

    monkeypatch.setattr(heron.envs.traffic, "_nets", missing)
    with pytest.raises(
        heron.ConfigError, match=r"^env heron/TrafficGrid2x2-v0 needs `pip install heron-rl\[traffic\]`$"
    ):
        heron.train(GRID, total_timesteps=8)


def test_backend_falls_back_to_traci_without_libsumo(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "libsumo" else find_spec(name, *a)
    )
    with pytest.warns(UserWarning, match="libsumo is not installed: running SUMO over TraCI"):
        assert _backend("libsumo") == "traci"
    with pytest.raises(heron.ConfigError, match=r"^backend: must be one of libsumo, traci, got 'sumo'$"):
        _backend("sumo")
