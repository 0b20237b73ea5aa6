"""Every observation and action space SB3 trains on: the policy chosen, the pool, the saved reward model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

import heron
from heron import checkpoints
from heron.sb3 import buffers
from heron.sb3.run import agent_memory

IMAGE = spaces.Box(0, 255, (36, 36, 1), dtype=np.uint8)  # NatureCNN's smallest input
DICT = spaces.Dict(
    {
        "position": spaces.Box(-1.0, 1.0, (2,), dtype=np.float32),
        "mode": spaces.Discrete(3),
        "gears": spaces.MultiDiscrete([2, 3]),
        "lights": spaces.MultiBinary(2),
    }
)
PPO_KWARGS = {"n_steps": 64, "batch_size": 32, "n_epochs": 1, "policy_kwargs": {"net_arch": [16]}}
FAST = {
    "reward_model": {"hidden": [16], "epochs": 1, "batch_size": 32},
    "comparison": {"pairs": 64, "pool_steps": 256},
    "eval": {"episodes": 1},
}


class SpaceEnv(gym.Env):
    """Eight-step episodes of random observations from any space; the factors score the action and the observation.

    :param observation_space: what the agent sees.
    :param action_space: what it does.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space, self.action_space = observation_space, action_space
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> Any:
        self.t += 1
        obs = self.observation_space.sample()
        factors = {"act": _score(self.action_space, action), "obs": _score(self.observation_space, obs)}
        return obs, factors["act"], False, self.t >= 8, {"factors": factors}


def _score(space: spaces.Space, value: Any) -> float:
    """A number that tells values of a space apart: their flattened entries weighted by position."""
    if not space.is_np_flattenable:
        return 0.0
    flat = spaces.flatten(space, value).astype(np.float64)
    return float(flat @ np.arange(1, flat.size + 1)) / flat.size


def batch(space: spaces.Space, n: int, seed: int = 0) -> Any:
    """``n`` raw values of a space, stacked (a Dict space: a dict of stacked arrays)."""
    space.seed(seed)
    values = [space.sample() for _ in range(n)]
    if isinstance(space, spaces.Dict):
        return {k: np.stack([v[k] for v in values]) for k in space.spaces}
    return np.stack(values)


def train(obs: spaces.Space, act: spaces.Space, algorithm: str = "ppo", **options: Any) -> heron.TrainResult:
    settings = {**FAST, "algorithm_kwargs": PPO_KWARGS, **options}
    return heron.train(
        lambda: SpaceEnv(obs, act), ["act", "obs"], algorithm=algorithm, total_timesteps=256, seed=0, **settings
    )


def check_saved_model(result: heron.TrainResult, obs: spaces.Space, act: spaces.Space, tmp_path: Path) -> None:
    """A fresh load scores raw values of the spaces as the run's model does, and as the loop rewarded
    the last rollout it read back from SB3's buffer."""
    assert result.reward_model is not None and result.loop is not None
    path = tmp_path / "reward.safetensors"
    result.reward_model.save(path)
    loaded = heron.RewardModel.load(path)
    raw = {"obs": batch(obs, 16), "action": batch(act, 16, seed=1), "next_obs": batch(obs, 16, seed=2)}
    raw["factors"] = np.random.default_rng(0).normal(size=(16, 2))
    given = {k: v for k, v in raw.items() if k in result.loop.encoding.inputs}
    scores = loaded.reward(**given)
    assert scores.shape == (16,) and np.isfinite(scores).all()
    np.testing.assert_array_equal(scores, result.loop.reward(**given))
    model = result.model
    if isinstance(model, OffPolicyAlgorithm) or "next_obs" in result.loop.encoding.inputs:
        return  # the replay buffer is checked by its test; next_obs rows by theirs
    rollout = model.rollout_buffer
    lead = (rollout.buffer_size, rollout.n_envs)
    actions = rollout.actions
    if isinstance(act, spaces.Box):
        actions = np.clip(actions, act.low, act.high)
    seen = loaded.reward(
        obs=buffers._shaped(model.observation_space, rollout.observations, lead),
        action=buffers._shaped(act, actions, lead),
        factors=result.loop.pool.fields["factors"][result.loop.pool.chronological()[-rollout.buffer_size :]],
    )
    np.testing.assert_allclose(seen, result.loop.recent_rewards(rollout.buffer_size), rtol=1e-5, atol=1e-5)


OBSERVATIONS = {
    "box": (spaces.Box(-1.0, 1.0, (3,), dtype=np.float32), "MlpPolicy"),
    "discrete": (spaces.Discrete(4), "MlpPolicy"),
    "multi_discrete": (spaces.MultiDiscrete([3, 2]), "MlpPolicy"),
    "multi_binary": (spaces.MultiBinary(3), "MlpPolicy"),
    "dict": (DICT, "MultiInputPolicy"),
}


@pytest.mark.parametrize("kind", list(OBSERVATIONS))
def test_observation_spaces(kind: str, tmp_path: Path) -> None:
    """PPO on each observation space: the policy SB3 needs, finite learned rewards, a saved model that scores raw
    observations (a Dict as a dict of arrays) the way the loop did."""
    obs, policy = OBSERVATIONS[kind]
    act = spaces.Discrete(3)
    result = train(obs, act, out=tmp_path / "run" if kind == "dict" else None)  # checkpoints of a Dict pool
    assert result.model.num_timesteps == 256
    assert type(result.model.policy) is result.model.policy_aliases[policy]
    assert result.loop is not None and set(result.loop.pool.fields) == {"obs", "action", "factors"}
    assert result.metrics[-1]["pairs_labeled"] > 0
    check_saved_model(result, obs, act, tmp_path)
    if kind == "dict":  # the checkpointed loop (pool of encoded Dict observations) loads into a fresh one
        ckpt = checkpoints.latest(tmp_path / "run")
        assert ckpt is not None
        fresh = heron.HeronLoop(
            ["act", "obs"], obs, act, reward_model=FAST["reward_model"], comparison={"pool_steps": 256}
        )
        fresh.load_state_dict(checkpoints.load_tensors(ckpt.file("loop.pt")))
        np.testing.assert_array_equal(fresh.pool.fields["obs"], result.loop.pool.fields["obs"])


def test_on_policy_dict_next_obs_with_two_envs(tmp_path: Path) -> None:
    """PPO, two envs, a reward model on obs, action and next_obs of a Dict space: each step's next_obs
    in the pool is the next step's observation in SB3's DictRolloutBuffer (the terminal one at an episode's end)."""
    inputs = ["obs", "action", "next_obs"]
    result = train(DICT, spaces.Discrete(3), n_envs=2, reward_model={"hidden": [16], "inputs": inputs})
    loop, rollout = result.loop, result.model.rollout_buffer
    assert loop is not None and rollout.n_envs == 2
    steps = rollout.buffer_size
    recent = loop.pool.chronological()[-steps:]
    stored = loop.pool.fields["next_obs"][recent]  # (T, 2, width)
    assert rollout.generator_ready  # PPO's training flattened each (T, env) array env-major: undo it
    unflat = {k: v.reshape(2, steps, *v.shape[1:]).swapaxes(0, 1) for k, v in rollout.observations.items()}
    seen = buffers._shaped(DICT, unflat, (steps, 2))
    encoded, _ = loop.encoding.encode({"obs": seen}, ["obs"])
    following = encoded["obs"].reshape(steps, 2, -1)[1:]
    within = ~loop.pool.dones[recent][:-1]  # the next row is the same episode
    assert within.sum() > 0 and (~within).sum() > 0
    np.testing.assert_array_equal(stored[:-1][within], following[within])
    assert not np.array_equal(stored[:-1][~within], following[~within])  # terminal observations, not the reset ones
    check_saved_model(result, DICT, spaces.Discrete(3), tmp_path)


ACTIONS = {
    "multi_discrete": spaces.MultiDiscrete([3, 2]),
    "multi_binary": spaces.MultiBinary(3),
    "box": spaces.Box(-1.0, 1.0, (2,), dtype=np.float32),
}


@pytest.mark.parametrize("kind", list(ACTIONS))
def test_action_spaces(kind: str, tmp_path: Path) -> None:
    """PPO with each action space (Discrete: above); the reward model reads the actions the env was given."""
    obs, act = spaces.Box(-1.0, 1.0, (3,), dtype=np.float32), ACTIONS[kind]
    result = train(obs, act)
    assert type(result.model.policy) is result.model.policy_aliases["MlpPolicy"]
    check_saved_model(result, obs, act, tmp_path)


@pytest.mark.parametrize(("algorithm", "act"), [("dqn", spaces.Discrete(3)), ("sac", spaces.Box(-1.0, 1.0, (2,)))])
def test_off_policy_dict_observations(algorithm: str, act: spaces.Space, tmp_path: Path) -> None:
    """DQN and SAC on a Dict observation: the reward model reads obs and next_obs back from SB3's
    DictReplayBuffer, and after the last refit every replay row holds the saved model's reward."""
    kwargs = {
        "learning_starts": 32,
        "buffer_size": 512,
        "batch_size": 16,
        "train_freq": 4,
        "policy_kwargs": {"net_arch": [16]},
    }
    comparison = {"pairs": 64, "pool_steps": 256, "update_every": 32}  # the last step refits: all rows relabeled
    inputs = ["obs", "action", "next_obs"]
    result = train(
        DICT,
        act,
        algorithm,
        algorithm_kwargs=kwargs,
        comparison=comparison,
        reward_model={"hidden": [16], "inputs": inputs},
    )
    assert type(result.model.policy) is result.model.policy_aliases["MultiInputPolicy"]
    check_saved_model(result, DICT, act, tmp_path)
    replay = result.model.replay_buffer
    upto = replay.buffer_size if replay.full else replay.pos
    lead = (upto, replay.n_envs)
    actions = replay.actions[:upto]
    if isinstance(act, spaces.Box):
        actions = result.model.policy.unscale_action(actions.reshape(upto, -1))
    loaded = heron.RewardModel.load(tmp_path / "reward.safetensors")
    expected = loaded.reward(
        obs=buffers._shaped(DICT, {k: v[:upto] for k, v in replay.observations.items()}, lead),
        action=buffers._shaped(act, actions, lead),
        next_obs=buffers._shaped(DICT, {k: v[:upto] for k, v in replay.next_observations.items()}, lead),
    )
    np.testing.assert_allclose(replay.rewards[:upto], expected, rtol=1e-5, atol=1e-5)


def test_images_train_on_factors_and_the_pool_stores_no_frame(tmp_path: Path) -> None:
    """Image observations: CnnPolicy, a reward model on factors (and actions), no frame in the pool."""
    act = spaces.Discrete(3)
    cnn = {**PPO_KWARGS, "policy_kwargs": {"net_arch": [16], "features_extractor_kwargs": {"features_dim": 16}}}
    result = train(IMAGE, act, algorithm_kwargs=cnn, reward_model={"hidden": [16], "inputs": ["action", "factors"]})
    assert type(result.model.policy) is result.model.policy_aliases["CnnPolicy"]
    assert result.loop is not None and set(result.loop.pool.fields) == {"action", "factors"}
    assert all(a.dtype == np.float32 and a.shape[-1] <= 3 for a in result.loop.pool.fields.values())
    check_saved_model(result, IMAGE, act, tmp_path)


def test_an_image_the_reward_model_would_read_is_one_line() -> None:
    for inputs in (["obs", "action"], ["next_obs", "factors"]):
        with pytest.raises(
            heron.ConfigError, match=r"^reward_model\.inputs: \w+ holds images.*use inputs: \[factors\]"
        ):
            train(IMAGE, spaces.Discrete(3), reward_model={"inputs": inputs})
    image_in_dict = spaces.Dict({"camera": IMAGE, "speed": spaces.Box(0.0, 1.0, (1,))})
    with pytest.raises(heron.ConfigError, match="obs holds images"):
        heron.HeronLoop(["a"], image_in_dict, spaces.Discrete(2))
    loop = heron.HeronLoop(["a"], image_in_dict, spaces.Discrete(2), reward_model={"inputs": ["factors"]})
    assert set(loop.pool.fields) == {"factors"}


def test_the_policy_can_be_chosen() -> None:
    """``algorithm_kwargs.policy`` overrides the choice (images flattened into an MLP); an unknown one is one line."""
    result = train(
        IMAGE,
        spaces.Discrete(3),
        algorithm_kwargs={**PPO_KWARGS, "policy": "MlpPolicy"},
        reward_model={"hidden": [16], "inputs": ["factors"]},
    )
    assert type(result.model.policy) is result.model.policy_aliases["MlpPolicy"]
    with pytest.raises(heron.ConfigError, match=r"^algorithm_kwargs\.policy: ppo has the policies MlpPolicy, "):
        train(spaces.Discrete(2), spaces.Discrete(2), algorithm_kwargs={**PPO_KWARGS, "policy": "TransformerPolicy"})


def test_nested_dict_and_tuple_observations_in_the_loop(tmp_path: Path) -> None:
    """The loop alone (SB3 does not train on them): nested Dict and Tuple spaces encode part by part
    and a saved model scores them raw."""
    obs = spaces.Dict(
        {
            "inner": spaces.Dict({"x": spaces.Discrete(2, start=1)}),
            "pair": spaces.Tuple((spaces.MultiBinary(2), spaces.Box(0, 1, (1,)))),
        }
    )
    loop = heron.HeronLoop(
        ["a"], obs, spaces.MultiDiscrete([2, 2]), reward_model={"hidden": [8]}, comparison={"pairs": 32}
    )
    assert loop.encoding.dim == 2 + 2 + 1 + 4
    rng = np.random.default_rng(0)
    raw = {"inner": {"x": rng.integers(1, 3, 64)}, "pair": (rng.integers(0, 2, (64, 2)), rng.random((64, 1)))}
    action = rng.integers(0, 2, (64, 2))
    loop.observe(obs=raw, action=action, factors=raw["inner"]["x"][:, None] * 1.0, dones=np.ones(64, bool))
    assert loop.refit()["pairs_labeled"] > 0
    loop.reward_model.save(tmp_path / "r.safetensors")
    scores = heron.RewardModel.load(tmp_path / "r.safetensors").reward(obs=raw, action=action)
    np.testing.assert_array_equal(scores, loop.recent_rewards(64)[:, 0])
    one = loop.reward(obs={"inner": {"x": 2}, "pair": (np.array([0, 1]), np.array([0.5]))}, action=np.array([1, 0]))
    assert one.shape == () and np.isfinite(one)  # a single step, unbatched
    with pytest.raises(heron.ConfigError, match=r"^obs\.pair: expected a sequence of 2 arrays"):
        loop.reward(obs={**raw, "pair": raw["pair"][:1]}, action=action)
    with pytest.raises(heron.ConfigError, match=r"^action: values outside MultiDiscrete\(\[2, 2\]"):
        loop.reward(obs=raw, action=action + 1)


@pytest.mark.parametrize(
    "space",
    [spaces.Text(8), spaces.Graph(spaces.Box(0, 1, (2,)), None), spaces.Sequence(spaces.Discrete(2))],
    ids=["text", "graph", "sequence"],
)
def test_an_unsupported_space_is_one_line(space: spaces.Space) -> None:
    with pytest.raises(heron.ConfigError, match=rf"^observation space: {type(space).__name__} is not supported"):
        heron.HeronLoop(["a"], space, spaces.Discrete(2))
    with pytest.raises(heron.ConfigError) as err:
        heron.train(lambda: SpaceEnv(space, spaces.Discrete(2)), ["act", "obs"], total_timesteps=64)
    assert "\n" not in str(err.value)


def test_spaces_sb3_cannot_train_on_are_one_line() -> None:
    """Spaces the reward model could read but SB3 cannot train on are refused before SB3 meets them."""
    tuple_obs = spaces.Tuple((spaces.Discrete(2), spaces.Discrete(2)))
    cases = [
        (tuple_obs, spaces.Discrete(2), r"^observation space: Tuple is not supported"),
        (spaces.Dict({"inner": DICT}), spaces.Discrete(2), r"^observation space\.inner: Dict is not supported"),
        (spaces.Box(-1, 1, (2,)), tuple_obs, r"^action space: Tuple is not supported"),
        (spaces.Discrete(3, start=1), spaces.Discrete(2), r"^observation space: Discrete\(3, start=1\) does not start"),
    ]
    for obs, act, match in cases:
        with pytest.raises(heron.ConfigError, match=match):
            heron.train(lambda: SpaceEnv(obs, act), ["act", "obs"], total_timesteps=64)  # noqa: B023


def test_the_memory_check_sums_a_dict_observation() -> None:
    """A Dict observation is sized as the sum of its parts (bytes as SB3's replay buffer stores them)."""
    cfg = heron.config.validate({"env": "<env>", "algorithm": "dqn", "algorithm_kwargs": {"buffer_size": 1000}}, "t")
    obs = spaces.Dict({"camera": IMAGE, "speed": spaces.Box(0.0, 1.0, (3,), dtype=np.float32)})
    parts = agent_memory(cfg, obs, spaces.Discrete(2), 1)
    size, _ = parts["algorithm_kwargs.buffer_size"]
    assert size == 1000 * (2 * (36 * 36 + 3 * 4) + (1 + 3) * 4)


gym.register("heron_test/DictObservations-v0", entry_point=lambda: SpaceEnv(DICT, spaces.Discrete(3)))


def test_an_off_policy_dict_run_checkpoints_and_resumes(tmp_path: Path) -> None:
    """DQN on a Dict observation with a run directory: its DictReplayBuffer is checkpointed key by key
    (pickle-free) and a resumed run continues to the total asked for with the same replay rows."""
    options = {
        **FAST,
        "algorithm_kwargs": {
            "learning_starts": 32,
            "buffer_size": 512,
            "train_freq": 4,
            "policy_kwargs": {"net_arch": [16]},
        },
        "checkpoint_every": 64,
    }
    out = tmp_path / "run"
    first = heron.train(
        "heron_test/DictObservations-v0", ["act", "obs"], algorithm="dqn", total_timesteps=128, out=out, **options
    )
    kept = {k: v[:128].copy() for k, v in first.model.replay_buffer.observations.items()}
    config = (out / "config.yaml").read_text().replace("total_timesteps: 128", "total_timesteps: 192")
    (out / "config.yaml").write_text(config)
    resumed = heron.resume(out)
    assert resumed.model.num_timesteps == 192
    for key, rows in kept.items():
        np.testing.assert_array_equal(resumed.model.replay_buffer.observations[key][:128], rows)
