"""The online loop on SB3: methods, algorithms, relabeling, checkpoints and resume."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import heron
from heron import checkpoints
from heron.features import Encoding
from heron.sb3 import buffers
from tests.envs import BANDIT_FACTORS, LEX_OPTIMUM, ContextualBandit

BANDIT = "heron_test/ContextualBandit-v0"
BANDIT_HIERARCHY = [heron.Factor("primary", "max"), heron.Factor("secondary", "max")]
BANDIT_PPO = {"n_steps": 256, "batch_size": 64, "learning_rate": 3e-3, "ent_coef": 0.01, "gamma": 0.0}


def greedy_actions(model) -> list[int]:
    obs = np.eye(2, dtype=np.float32)
    actions, _ = model.predict(obs, deterministic=True)
    return [int(a) for a in actions]


@pytest.mark.parametrize("method", ["heron", "weighted-sum"])
def test_bandit_lexicographic_optimum(method: str) -> None:
    """A ranking reaches the lexicographic optimum where equal weights do not."""
    result = heron.train(
        BANDIT,
        BANDIT_HIERARCHY,
        method=method,
        total_timesteps=6144,
        seed=1,
        algorithm_kwargs=BANDIT_PPO,
        eval={"every": 1024, "episodes": 20},
    )
    actions = greedy_actions(result.model)
    if method == "heron":
        assert tuple(actions) == LEX_OPTIMUM
        assert result.final_return == pytest.approx(1.0)
        assert result.reward_model is not None
        assert max(m["pairs_labeled"] for m in result.metrics) > 0
        last = result.metrics[-1]
        assert last["decided/primary"] + last["decided/secondary"] + last["unlabeled"] == pytest.approx(1.0)
    else:
        assert actions == [2, 2]
        assert result.reward_model is None
        assert result.final_return == pytest.approx(0.8)


def test_bandit_reward_model_is_state_dependent() -> None:
    """The default state-action reward model ranks actions differently in each context."""
    result = heron.train(
        BANDIT, BANDIT_HIERARCHY, total_timesteps=2048, seed=0, algorithm_kwargs=BANDIT_PPO, eval={"episodes": 2}
    )
    obs = np.repeat(np.eye(2, dtype=np.float32), 3, axis=0)
    actions = np.tile(np.arange(3), 2)
    rewards = result.reward_model.reward(obs=obs, action=actions).reshape(2, 3)
    assert rewards.argmax(axis=1).tolist() == list(LEX_OPTIMUM)
    # Within a context the reward follows the lexicographic order of the factors.
    for context in range(2):
        lex = sorted(range(3), key=lambda a: tuple(BANDIT_FACTORS[context, a]))
        assert np.argsort(rewards[context]).tolist() == lex


def _pendulum(algorithm: str, **extra):
    kwargs = {"ppo": {"n_steps": 256, "batch_size": 64}, "a2c": {"n_steps": 32}}.get(
        algorithm, {"learning_starts": 200, "buffer_size": 5000, "train_freq": 4, "gradient_steps": 1}
    )
    return heron.train(
        "heron/Pendulum-v1",
        algorithm=algorithm,
        total_timesteps=800,
        seed=0,
        algorithm_kwargs=kwargs,
        **{
            "comparison": {"pairs": 256, "update_every": 300, "pool_steps": 1000},
            "reward_model": {"hidden": [32, 32]},
            "eval": {"every": 400, "episodes": 1},
            **extra,
        },
    )


def _learned_rewards(result: heron.TrainResult, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
    return result.reward_model.reward(obs=obs, action=actions)


@pytest.mark.parametrize("algorithm", ["sac", "td3", "ddpg"])
def test_off_policy_replay_buffer_relabeled(algorithm: str) -> None:
    """After training, every stored reward is the current reward model's, old rows included."""
    result = _pendulum(algorithm)
    buffer = result.model.replay_buffer
    assert buffer.pos == 800 and not buffer.full
    obs = buffer.observations[:800].reshape(800, -1)
    actions = result.model.policy.unscale_action(buffer.actions[:800].reshape(800, -1))
    expected = _learned_rewards(result, obs, actions)
    np.testing.assert_allclose(buffer.rewards[:800, 0], expected, rtol=1e-4, atol=1e-4)
    # The model was refit more than once (each evaluation saw a different fit), so the early rows
    # were relabeled by a later model, not frozen at the one that first scored them.
    losses = {m["rm_loss"] for m in result.metrics if np.isfinite(m.get("rm_loss", np.nan))}
    assert len(losses) >= 2 and result.loop.last_refit == 800
    assert np.std(buffer.rewards[:800, 0]) == pytest.approx(1.0, abs=0.5)


@pytest.mark.parametrize("algorithm", ["ppo", "a2c"])
def test_on_policy_rollout_uses_learned_reward(algorithm: str) -> None:
    """The last rollout's stored rewards are the learned reward (plus SB3's timeout bootstrap)."""
    result = _pendulum(algorithm)
    buffer = result.model.rollout_buffer
    n = buffer.buffer_size
    obs = buffer.observations.reshape(n, -1)
    # Pendulum truncates at 200 steps: the bootstrap only touches those rows.
    actions = np.clip(buffer.actions.reshape(n, -1), -2, 2)
    expected = _learned_rewards(result, obs, actions)
    steps = result.model.num_timesteps - n + np.arange(n) + 1
    plain = steps % 200 != 0
    np.testing.assert_allclose(buffer.rewards[plain, 0], expected[plain], rtol=1e-4, atol=1e-4)


def test_flat_preference_learns_what_its_weighted_sum_teacher_prefers() -> None:
    """Pairs labeled by equal weights lead to the heavier action 2, where the ranking leads to (0, 1)."""
    result = heron.train(
        BANDIT,
        BANDIT_HIERARCHY,
        method="flat-preference",
        total_timesteps=6144,
        seed=1,
        algorithm_kwargs=BANDIT_PPO,
        eval={"every": 2048, "episodes": 20},
    )
    assert greedy_actions(result.model) == [2, 2]
    assert result.final_return == pytest.approx(0.8)
    last = result.metrics[-1]
    assert last["pairs_labeled"] > 0 and "decided/primary" not in last  # a weighted sum has no levels


def test_dqn_replay_buffer_relabeled_with_one_hot_actions() -> None:
    """DQN's replay rows (Discrete actions stored as (n, 1) integers) carry the current model's reward."""
    result = heron.train(
        BANDIT,
        BANDIT_HIERARCHY,
        algorithm="dqn",
        total_timesteps=600,
        seed=0,
        algorithm_kwargs={"learning_starts": 100, "buffer_size": 1000},
        comparison={"update_every": 200, "pairs": 256},
        eval={"episodes": 2},
    )
    buffer = result.model.replay_buffer
    expected = result.reward_model.reward(obs=buffer.observations[:600, 0], action=buffer.actions[:600, 0, 0])
    np.testing.assert_allclose(buffer.rewards[:600, 0], expected, rtol=1e-5, atol=1e-5)
    assert result.metrics[-1]["step"] == 600 and result.loop.last_refit == 500  # refits at 100, 300, 500


@pytest.mark.parametrize("unit", ["segment", "episode"])
def test_segment_and_episode_units(unit: str) -> None:
    """Pairs are whole 20-step segments or whole 200-step episodes, and the model orders them as labeled."""
    result = heron.train(
        "heron/Pendulum-v1",
        total_timesteps=1024,
        seed=0,
        algorithm_kwargs={"n_steps": 512, "batch_size": 64},
        comparison={"unit": unit, "segment_length": 20, "aggregate": "mean", "pairs": 512, "pool_steps": 1024},
        reward_model={"hidden": [32], "epochs": 10},
        eval={"episodes": 1},
    )
    loop = result.loop
    index = loop.pool.units(unit, 20)
    # Pendulum episodes are 200 steps: 5 complete ones in 1,024 steps; segments never cross an episode end.
    assert index.shape == ((5, 200) if unit == "episode" else (1024 - 20 + 1 - 5 * 19, 20)) and (index >= 0).all()
    assert result.metrics[-1]["pairs_labeled"] > 0
    factors = loop.pool.flat("factors").astype(np.float64)
    z = factors[index].mean(axis=1)
    rows, _ = loop.encoding.rows({k: loop.pool.flat(k) for k in loop.encoding.inputs})
    scores = result.reward_model.score(torch.from_numpy(rows)).numpy()[index].sum(axis=1)
    a, b = np.triu_indices(len(index), 1)
    labels = loop.hierarchy.compare(z[a], z[b])
    agree = np.sign(scores[a] - scores[b])[labels != 0] == labels[labels != 0]
    assert agree.mean() > 0.7  # every pair of units in the pool, most never labeled (chance: 0.5)


def test_env_object_and_callable_accepted() -> None:
    for env in (ContextualBandit(), ContextualBandit):
        result = heron.train(
            env, BANDIT_HIERARCHY, total_timesteps=256, algorithm_kwargs=BANDIT_PPO, eval={"episodes": 1}
        )
        assert result.metrics[-1]["step"] == 256


def test_missing_factor_mid_run_raises() -> None:
    with pytest.raises(heron.FactorError, match="did not report factor 'torque'"):
        heron.train(
            "heron_test/PendulumDropsTorque-v0",
            ["angle", "torque"],
            total_timesteps=1024,
            algorithm_kwargs={"n_steps": 512, "batch_size": 64},
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hierarchy": ["nope"]}, "factor 'nope' is not reported"),
        ({"algorithm": "foo"}, "unknown algorithm"),
        ({"method": "magic"}, "unknown method"),
        ({"total_timesteps": 0}, "total_timesteps"),
        ({"weights": {"ghost": 1.0}}, "weights: factor 'ghost'"),
        ({"comparison": {"unit": "decade"}}, "comparison.unit"),
        ({"reward_model": {"inputs": []}}, "reward_model.inputs"),
        ({"algorithm_kwargs": {"n_stepz": 3}}, "algorithm_kwargs"),
        ({"algorithm_kwargs": {"seed": 3}}, r"algorithm_kwargs\.seed: set by heron"),
        # Values that used to validate and fail minutes into training, or silently mean something else.
        ({"total_timesteps": True}, "total_timesteps: Input should be a valid integer"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"seed": 2**64}, "seed: Input should be less than 4294967296"),
        ({"reward_model": {"lr": float("inf")}}, r"reward_model\.lr: Input should be a finite number"),
        ({"reward_model": {"lr": 1e10}}, r"reward_model\.lr: Input should be less than or equal to 1"),
        ({"reward_model": {"weight_decay": float("inf")}}, r"reward_model\.weight_decay: Input should be a finite"),
        ({"reward_model": {"hidden": [64, True]}}, r"reward_model\.hidden\.1: Input should be a valid integer"),
        ({"comparison": {"pairs": 4096.0}}, r"comparison\.pairs: Input should be a valid integer"),
        ({"weights": {"angle": 1e300}}, "weights: weights must be finite numbers of at most 3.4e"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict, match: str) -> None:
    args = {"total_timesteps": 100, **kwargs}
    hierarchy = args.pop("hierarchy", None)
    with pytest.raises(heron.ConfigError, match=match):
        heron.train("heron/Pendulum-v1", hierarchy, **args)


def test_unknown_env_and_env_without_factors() -> None:
    with pytest.raises(heron.ConfigError, match="unknown environment"):
        heron.train("NoSuchEnv-v9", ["a"], total_timesteps=10)
    with pytest.raises(heron.FactorError, match="reports no info"):
        heron.train("Pendulum-v1", ["a"], total_timesteps=10)
    with pytest.raises(heron.ConfigError, match="hierarchy: required"):
        heron.train(lambda: gym.make("heron/Pendulum-v1"), total_timesteps=10)


def test_run_directory_and_checkpoint_round_trip(tmp_path) -> None:
    out = tmp_path / "run"
    result = _pendulum("sac", out=out)
    for name in ("config.yaml", "metrics.csv", "learning_curve.png", "policy.zip", "reward_model.safetensors"):
        assert (out / name).exists(), name
    assert any((out / "tb").rglob("events.out.tfevents*"))
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("step", "return_mean", "factor/angle", "rm_accuracy", "decided/angle", "unlabeled"):
        assert column in header
    state = checkpoints.latest(out).state
    assert state["complete"] and state["num_timesteps"] == 800
    loaded = heron.RewardModel.load(out / "reward_model.safetensors")
    x = torch.randn(16, loaded.config["input_dim"])
    torch.testing.assert_close(loaded.score(x), result.reward_model.score(x))
    with pytest.raises(heron.ConfigError, match="already holds a run"):
        _pendulum("sac", out=out)


def test_resume_continues_from_checkpoint(tmp_path) -> None:
    out = tmp_path / "run"
    _pendulum("ppo", out=out)
    # Extend the finished run's budget, as if it had been interrupted before reaching it.
    config = (out / "config.yaml").read_text().replace("total_timesteps: 800", "total_timesteps: 1200")
    (out / "config.yaml").write_text(config)
    result = heron.resume(out)
    steps = [int(m["step"]) for m in result.metrics]
    # PPO trains in whole rollouts of 256 steps: 1024 before the restart, one more rollout after it.
    assert steps == [400, 800, 1024, 1280]
    assert result.model.num_timesteps == 1280
    assert checkpoints.latest(out).state["complete"]


def test_resume_of_a_finished_run_changes_nothing(tmp_path) -> None:
    out = tmp_path / "run"
    first = _pendulum("ppo", out=out)
    again = heron.resume(out)
    assert again.model.num_timesteps == first.model.num_timesteps
    assert [m["step"] for m in again.metrics] == [m["step"] for m in first.metrics]


@pytest.mark.parametrize("algorithm", ["ppo", "sac"])
def test_every_reward_model_input_trains(algorithm: str) -> None:
    """next_obs and factors as inputs (with or without obs/action): recorded, learned, sized right."""
    for inputs, dim in [(["next_obs", "factors"], 3 + 3), (["obs", "action", "next_obs", "factors"], 3 + 1 + 3 + 3)]:
        result = _pendulum(algorithm, reward_model={"hidden": [32, 32], "inputs": inputs})
        assert result.reward_model.config["input_dim"] == dim
        assert np.isfinite(result.metrics[-1]["rm_loss"])


def test_reward_scale_reaches_the_replay_buffer() -> None:
    """reward_model.scale sets the spread of the rewards the agent learns from."""
    result = _pendulum("sac", reward_model={"hidden": [32, 32], "scale": 0.1})
    assert result.reward_model.config["scale"] == 0.1
    buffer = result.model.replay_buffer
    rewards = buffer.rewards[: buffer.pos].ravel()
    assert rewards.std() == pytest.approx(0.1, rel=0.05)
    assert abs(rewards.mean()) < 0.01


def test_on_policy_pool_holds_exactly_the_steps_taken(monkeypatch) -> None:
    """Rollouts appended at once hold each step's observation, the action the env was given (clipped),
    the next observation (the terminal one where an episode ended), the factors and the dones."""
    seen, pools = [], []
    stage = buffers.OnPolicyAdapter.on_step

    def spy(self, local, factors):
        next_obs = np.array(local["new_obs"], dtype=np.float32, copy=True)
        for i in np.flatnonzero(local["dones"]):
            next_obs[i] = local["infos"][i]["terminal_observation"]
        seen.append(
            {
                "obs": np.array(self.model._last_obs),
                "action": np.array(local["clipped_actions"]),
                "next_obs": next_obs,
                "factors": factors.copy(),
                "dones": np.array(local["dones"]),
            }
        )
        pools.append(self.loop.pool)
        stage(self, local, factors)

    monkeypatch.setattr(buffers.OnPolicyAdapter, "on_step", spy)
    heron.train(
        "heron/Pendulum-v1",
        total_timesteps=480,
        n_envs=2,
        seed=0,
        algorithm_kwargs={"n_steps": 96, "batch_size": 64},
        comparison={"pool_steps": 150, "pairs": 64},
        reward_model={"hidden": [8], "inputs": ["obs", "action", "next_obs", "factors"]},
        eval={"every": 480, "episodes": 1},
    )
    pool = pools[-1]
    assert len(seen) == pool.count == 3 * 96  # whole rollouts; episodes of 200 steps end inside the second
    held = seen[-pool.size :]
    assert any(step["dones"].any() for step in held)
    for name in ("obs", "action", "next_obs", "factors"):
        expected = np.concatenate([step[name].reshape(2, -1) for step in held])
        np.testing.assert_allclose(pool.flat(name)[pool.recent_rows(pool.size)], expected, rtol=1e-6)
    np.testing.assert_array_equal(pool.dones[pool.chronological()], np.stack([step["dones"] for step in held]))
    assert np.abs(np.concatenate([step["action"] for step in held])).max() == 2.0  # some actions were clipped


def test_pool_keeps_only_what_the_reward_model_reads() -> None:
    box = gym.spaces.Box(-1, 1, (3,))
    feats = Encoding.from_spaces(box, gym.spaces.Discrete(4), ["a", "b"], ("obs", "action"))
    assert feats.stored == {"obs": 3, "action": 4, "factors": 2}
    assert Encoding.from_spaces(box, box, ["a", "b"], ("next_obs",)).stored == {"next_obs": 3, "factors": 2}


class VectorReward(ContextualBandit):
    """The bandit with a vector reward, as multi-objective envs return it."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, np.array([reward, 0.0]), terminated, truncated, info


def test_env_problems_are_named_at_the_probe_step() -> None:
    with pytest.raises(heron.ConfigError, match=r"env VectorReward returns a step reward of shape \(2,\)"):
        heron.train(VectorReward, BANDIT_HIERARCHY, total_timesteps=64)
    with pytest.raises(heron.ConfigError, match="factor 'nope' is not reported by env ContextualBandit"):
        heron.train(lambda: ContextualBandit(), ["nope"], total_timesteps=64)  # named by what it makes
    with pytest.raises(heron.ConfigError, match=r"^sac does not support the env's space Discrete\(3\)"):
        heron.train(BANDIT, BANDIT_HIERARCHY, algorithm="sac", total_timesteps=64)


def test_tensorboard_and_metrics_agree_on_every_evaluation(tmp_path) -> None:
    """Each evaluation is in TensorBoard at its own step with the metrics.csv value, the last one included."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _pendulum("ppo", out=tmp_path / "run")
    events = EventAccumulator(str(next((tmp_path / "run" / "tb").iterdir())))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("eval/return_mean")]
    expected = [(int(m["step"]), m["return_mean"]) for m in result.metrics]
    assert [s for s, _ in logged] == [s for s, _ in expected] == [400, 800, 1024]
    np.testing.assert_allclose([v for _, v in logged], [v for _, v in expected], rtol=1e-6)


def test_progress_prints_lines_when_not_a_terminal(capsys) -> None:
    result = heron.train(
        BANDIT, BANDIT_HIERARCHY, total_timesteps=512, algorithm_kwargs=BANDIT_PPO, eval={"episodes": 2}, progress=True
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == f"training 512/512 steps (100%), {lines[-1].split(', ')[1]}, return {result.final_return:.1f}"
