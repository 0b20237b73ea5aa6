"""The online HERON loop on Stable-Baselines3. The only module that touches SB3 internals.

collect (SB3 rollout) -> compare (hierarchy over units of recent experience) -> fit the reward
model (Bradley-Terry) -> relabel what the agent learns from (rollout or replay buffer) -> improve.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from gymnasium import spaces
from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper

from heron import report
from heron.config import RunConfig, from_hierarchy, to_hierarchy, validate
from heron.envs import REGISTRY, make_env
from heron.errors import ConfigError
from heron.factors import probe_factor_names, read_factors
from heron.hierarchy import Factor, Hierarchy, finite_std
from heron.preferences import (
    ExperiencePool,
    HierarchyTeacher,
    Teacher,
    WeightedSumTeacher,
    aggregate,
    flip,
    sample_pairs,
)
from heron.reward_model import BradleyTerryTrainer, RewardModel, TrainerConfig, Units
from heron.slots import SlotVecEnv, slot_count

ALGORITHM_CLASSES: dict[str, type[BaseAlgorithm]] = {
    "ppo": PPO,
    "a2c": A2C,
    "sac": SAC,
    "td3": TD3,
    "ddpg": DDPG,
    "dqn": DQN,
}
LEARNED = ("heron", "flat-preference")
DEFAULT_POOL_STEPS = 10_000  # comparison.pool_steps: 0
NORMALIZATION_ROWS = 16_384  # pool rows the learned reward's shift and scale are computed from
EnvSpec = str | gym.Env | Callable[[], gym.Env]


@dataclass
class TrainResult:
    """What :func:`train` returns.

    :param model: the trained SB3 model.
    :param reward_model: the learned reward model (None for ``ground-truth`` and ``weighted-sum``).
    :param metrics: one row per evaluation (see ``metrics.csv``).
    :param run_dir: where the run's files are, if it was given one.
    :param config: the validated settings the run used.
    """

    model: BaseAlgorithm
    reward_model: RewardModel | None
    metrics: list[dict[str, Any]]
    run_dir: Path | None = None
    config: RunConfig | None = field(default=None, repr=False)

    @property
    def final_return(self) -> float:
        """Mean ground-truth return of the last evaluation."""
        return float(self.metrics[-1]["return_mean"]) if self.metrics else math.nan


class RewardSwap(VecEnvWrapper):
    """Reads each step's factors and decides what reward the agent sees.

    ``mode="env"``: the env's own reward; ``"weights"``: a fixed weighted sum of the factors;
    ``"deferred"``: 0 now, the learned reward is written into the agent's buffer at the end of the
    rollout (one batched reward-model call instead of one per step). The env's reward stays in
    ``info["env_reward"]`` and in the Monitor's episode statistics.
    """

    def __init__(self, venv: VecEnv, factor_names: list[str], mode: str, weights: np.ndarray | None = None):
        super().__init__(venv)
        self.factor_names = factor_names
        self.mode = mode
        self.weights = weights
        self.factors = np.zeros((venv.num_envs, len(factor_names)), dtype=np.float32)

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        self.factors = np.array([read_factors(info, self.factor_names) for info in infos], dtype=np.float32)
        for info, r in zip(infos, rewards, strict=True):
            info["env_reward"] = float(r)
        if self.mode == "weights":
            assert self.weights is not None
            rewards = (self.factors @ self.weights).astype(np.float32)
        elif self.mode == "deferred":
            rewards = np.zeros_like(rewards)
        return obs, rewards, dones, infos


class _Features:
    """Turns observations and actions into flat float rows for the reward model."""

    def __init__(self, obs_space: spaces.Space, action_space: spaces.Space, n_factors: int, inputs: tuple[str, ...]):
        self.obs_space = obs_space
        self.action_space = action_space
        self.widths = {
            "obs": _width(obs_space, "observation"),
            "action": _width(action_space, "action"),
            "next_obs": _width(obs_space, "observation"),
            "factors": n_factors,
        }
        self.inputs = inputs

    @property
    def dim(self) -> int:
        return sum(self.widths[k] for k in self.inputs)

    @property
    def stored(self) -> dict[str, int]:
        """Fields the experience pool keeps: the reward model's inputs and the factors."""
        return {k: w for k, w in self.widths.items() if k in self.inputs or k == "factors"}

    def encode(self, space: spaces.Space, x: np.ndarray, n: int) -> np.ndarray:
        if isinstance(space, spaces.Discrete):
            return np.eye(int(space.n), dtype=np.float32)[np.asarray(x).reshape(n).astype(np.int64) - int(space.start)]
        return np.asarray(x, dtype=np.float32).reshape(n, -1)

    def rows(self, fields: dict[str, np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([fields[k] for k in self.inputs], axis=1))


def _width(space: spaces.Space, what: str) -> int:
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    raise ConfigError(f"{what} space {type(space).__name__} is not supported (use Box or Discrete)")


class HeronCallback(BaseCallback):
    """Records experience, refits the reward model, relabels the agent's buffer, evaluates, checkpoints.

    Works for on-policy (rollout buffer) and off-policy (replay buffer) SB3 algorithms.
    """

    def __init__(self, run: _Run) -> None:
        super().__init__()
        self.run = run
        self.cfg = run.cfg
        self.rng = np.random.default_rng(run.cfg.seed)
        self.metrics: list[dict[str, Any]] = []
        self.diagnostics: dict[str, Any] = {}
        self._last_refit = -(10**12)
        self._last_eval = 0
        self._last_checkpoint = 0
        self._elapsed = 0.0
        self._started = time.perf_counter()
        self._last_return = math.nan
        self._progress: Any = None
        self.pool: ExperiencePool | None = None
        self._rb_factors: np.ndarray | None = None
        self._restored_rb_factors: np.ndarray | None = None
        self._since_relabel = 0
        # On-policy: what the rollout buffer does not keep, staged per step until the rollout ends.
        self._staged_factors = np.zeros(0, dtype=np.float32)
        self._staged_dones = np.zeros(0, dtype=bool)
        self._staged_terminals: dict[tuple[int, int], np.ndarray] = {}

    # -- SB3 hooks -------------------------------------------------------------------------------
    def _init_callback(self) -> None:
        run = self.run
        self.on_policy = isinstance(self.model, OnPolicyAlgorithm)
        if run.learned:
            n_envs = self.training_env.num_envs
            capacity = self.cfg.comparison.pool_steps or DEFAULT_POOL_STEPS
            if self.on_policy:
                n_steps = int(self.model.n_steps)  # type: ignore[attr-defined]
                capacity = max(capacity, n_steps)
                self._staged_factors = np.zeros((n_steps, n_envs, len(run.factor_names)), dtype=np.float32)
                self._staged_dones = np.zeros((n_steps, n_envs), dtype=bool)
            elif "factors" in self.cfg.reward_model.inputs:
                size = self.model.replay_buffer.buffer_size  # type: ignore[attr-defined]
                self._rb_factors = np.zeros((size, n_envs, len(run.factor_names)), dtype=np.float32)
                restored = self._restored_rb_factors
                if restored is not None and restored.shape == self._rb_factors.shape:
                    self._rb_factors[:] = restored
            self.pool = ExperiencePool(capacity, n_envs, run.features.stored)
        if run.progress:
            self._progress = _Progress(self.cfg.total_timesteps, self.num_timesteps)

    def _on_step(self) -> bool:
        if self.pool is not None:
            if self.on_policy:
                self._stage()
            else:
                self._record()
        if self.num_timesteps - self._last_eval >= self.run.eval_every:
            self._evaluate()
        if self._progress is not None:
            self._progress.update(self.num_timesteps, self._last_return)
        return True

    def _on_rollout_end(self) -> None:
        if self.pool is None or self._since_relabel == 0:
            return
        if self.on_policy:
            self._record_rollout()
        warmup = max(self.cfg.comparison.warmup_steps, int(getattr(self.model, "learning_starts", 0)))
        refitted = False
        if self.num_timesteps >= warmup and self.num_timesteps - self._last_refit >= self.run.update_every:
            refitted = self._refit()
        if self.on_policy:
            self._relabel_rollout()
        else:
            self._relabel_replay(full=refitted)
        self._since_relabel = 0

    def _on_training_end(self) -> None:
        if self._progress is not None:
            self._progress.close()

    # -- experience ------------------------------------------------------------------------------
    def _record(self) -> None:
        """Off-policy: append this step to the pool."""
        assert self.pool is not None

        def next_obs() -> np.ndarray:
            out = np.array(self.locals["new_obs"], dtype=np.float32, copy=True)
            for i, terminal in self._terminals():
                out[i] = terminal
            return out

        n = self.training_env.num_envs
        fields = self._pool_fields(n, lambda: self.model._last_obs, lambda: self.locals["actions"], next_obs)
        self.pool.add(self.locals["dones"], factors=self.run.swap.factors, **fields)
        self._since_relabel += 1

    def _pool_fields(
        self, n: int, obs: Callable[[], Any], action: Callable[[], Any], next_obs: Callable[[], Any]
    ) -> dict[str, np.ndarray]:
        """The reward-model inputs the pool keeps, encoded as (n, width) rows; each source is read
        only if its field is kept."""
        assert self.pool is not None
        feats = self.run.features
        sources = {
            "obs": (feats.obs_space, obs),
            "action": (feats.action_space, action),
            "next_obs": (feats.obs_space, next_obs),
        }
        return {k: feats.encode(space, read(), n) for k, (space, read) in sources.items() if k in self.pool.fields}

    def _terminals(self) -> list[tuple[int, np.ndarray]]:
        """(env, last observation) of the episodes that ended this step and were reset."""
        infos = self.locals["infos"]
        found = ((int(i), infos[i].get("terminal_observation")) for i in np.flatnonzero(self.locals["dones"]))
        return [(i, terminal) for i, terminal in found if terminal is not None]

    def _stage(self) -> None:
        """On-policy: keep this step's factors and dones; observations and actions are in the rollout buffer."""
        assert self.pool is not None
        t = self.model.rollout_buffer.pos  # type: ignore[attr-defined]
        self._staged_factors[t] = self.run.swap.factors
        self._staged_dones[t] = self.locals["dones"]
        if "next_obs" in self.pool.fields:
            for i, terminal in self._terminals():
                self._staged_terminals[(t, i)] = terminal
        self._since_relabel += 1

    def _record_rollout(self) -> None:
        """On-policy: append the whole rollout to the pool at once, from the rollout buffer and the staged steps."""
        assert self.pool is not None
        buffer = self.model.rollout_buffer  # type: ignore[attr-defined]
        steps, n_envs = buffer.buffer_size, buffer.n_envs

        def actions() -> np.ndarray:  # what the env was given, as SB3 computes it
            space = self.run.features.action_space
            if not isinstance(space, spaces.Box):
                return buffer.actions
            if self.model.policy.squash_output:
                return self.model.policy.unscale_action(buffer.actions)
            return np.clip(buffer.actions, space.low, space.high)

        def next_obs() -> np.ndarray:
            out = np.concatenate([buffer.observations[1:], np.asarray(self.locals["new_obs"])[None]])
            out = out.astype(np.float32)
            for (t, i), terminal in self._staged_terminals.items():
                out[t, i] = terminal
            return out

        fields = self._pool_fields(steps * n_envs, lambda: buffer.observations, actions, next_obs)
        fields["factors"] = self._staged_factors
        self.pool.extend(self._staged_dones, **{k: v.reshape(steps, n_envs, -1) for k, v in fields.items()})
        self._staged_terminals.clear()

    def _refit(self) -> bool:
        assert self.pool is not None and self.run.trainer is not None
        comparison = self.cfg.comparison
        index = self.pool.units(comparison.unit, comparison.segment_length)
        if len(index) < 2:
            return False
        z = aggregate(self.pool.flat("factors").astype(np.float64), index, comparison.aggregate)
        pairs = sample_pairs(
            len(index), comparison.pairs, self.rng, comparison.units_per_batch, self.cfg.reward_model.batch_size
        )
        result = self.run.teacher.label(z[pairs[:, 0]], z[pairs[:, 1]], finite_std(z))
        labels = flip(result.labels, comparison.teacher_noise, self.rng)
        rows = self.run.features.rows({k: self.pool.flat(k) for k in self.run.features.inputs})
        units = Units(rows, torch.from_numpy(index))
        stats = self.run.trainer.fit(units, torch.from_numpy(pairs), torch.from_numpy(labels.astype(np.int64)))
        if stats.pairs:
            # Keep the scale of the previous fit when nothing was learned (every pair tied). The
            # statistics come from the newest NORMALIZATION_ROWS rows of the pool: plenty for a
            # mean and a 1% quantile, and a bounded cost when many slots fill the pool fast.
            steps = min(self.pool.size, max(NORMALIZATION_ROWS // self.pool.n_envs, 1))
            recent = torch.from_numpy(self.pool.recent_rows(steps))
            self.run.reward_model.refresh_normalization(rows[recent])
        shares = result.level_shares(len(self.run.factor_names))
        self.diagnostics = {
            "rm_accuracy": stats.accuracy_before,
            "rm_loss": stats.loss,
            "pairs_labeled": stats.pairs,
            "unlabeled": float(shares[-1]),
            "nonfinite": int(result.nonfinite.sum()),
        }
        if isinstance(self.run.teacher, HierarchyTeacher):  # a weighted-sum teacher has no levels
            self.diagnostics.update(
                {f"decided/{n}": float(s) for n, s in zip(self.run.factor_names, shares[:-1], strict=True)}
            )
        for key, value in self.diagnostics.items():
            self.logger.record(f"heron/{key}", value)
        self._last_refit = self.num_timesteps
        return True

    def _rewards_of_recent(self, steps: int) -> np.ndarray:
        assert self.pool is not None
        index = torch.from_numpy(self.pool.recent_rows(steps))
        fields = {k: self.pool.flat(k)[index.numpy()] for k in self.run.features.inputs}
        rewards = self.run.reward_model.reward(self.run.features.rows(fields))
        return rewards.numpy().reshape(steps, self.training_env.num_envs)

    def _relabel_rollout(self) -> None:
        """Add the learned reward to the rollout (which holds only SB3's timeout bootstrap so far)."""
        buffer = self.model.rollout_buffer  # type: ignore[attr-defined]
        buffer.rewards += self._rewards_of_recent(buffer.buffer_size)
        buffer.compute_returns_and_advantage(last_values=self.locals["values"], dones=self.locals["dones"])

    def _relabel_replay(self, full: bool) -> None:
        """Write learned rewards for the newest replay rows, or for every row after a refit."""
        buffer = self.model.replay_buffer  # type: ignore[attr-defined]
        steps = self._since_relabel
        positions = (buffer.pos - steps + np.arange(steps)) % buffer.buffer_size
        if self._rb_factors is not None:
            assert self.pool is not None
            self._rb_factors[positions] = self.pool.fields["factors"][self.pool.chronological()[-steps:]]
        if not full:
            buffer.rewards[positions] = self._rewards_of_recent(steps)
            return
        upto = buffer.buffer_size if buffer.full else buffer.pos
        n = upto * buffer.n_envs
        feats = self.run.features
        actions = buffer.actions[:upto]
        if isinstance(feats.action_space, spaces.Box):
            actions = self.model.policy.unscale_action(actions.reshape(n, -1))
        fields = {
            "obs": feats.encode(feats.obs_space, buffer.observations[:upto], n),
            "action": feats.encode(feats.action_space, actions, n),
            "next_obs": feats.encode(feats.obs_space, _next_observations(buffer, upto), n),
        }
        if self._rb_factors is not None:
            fields["factors"] = self._rb_factors[:upto].reshape(n, -1)
        buffer.rewards[:upto] = self.run.reward_model.reward(feats.rows(fields)).numpy().reshape(upto, -1)

    # -- evaluation and checkpoints --------------------------------------------------------------
    def _evaluate(self) -> None:
        self._last_eval = self.num_timesteps
        row = {
            "step": self.num_timesteps,
            "wall_clock_s": self._elapsed + time.perf_counter() - self._started,
            **evaluate(
                self.model,
                self.run.eval_env,
                self.cfg.eval.episodes,
                self.run.factor_names,
                seed=self.cfg.seed + 10_000 + len(self.metrics),
            ),
            **self.diagnostics,
        }
        self.metrics.append(row)
        self._last_return = row["return_mean"]
        for key in ("return_mean", "return_std", *(f"factor/{n}" for n in self.run.factor_names)):
            self.logger.record(f"eval/{key}", row[key])
        if self.run.run_dir is not None:
            report.write_metrics(self.run.run_dir / "metrics.csv", self.metrics, self.run.columns)
            if self.num_timesteps - self._last_checkpoint >= self.run.checkpoint_every:
                self.checkpoint()

    def checkpoint(self) -> None:
        """Save everything needed to resume: policy, reward model, trainer, counters, metrics."""
        run_dir = self.run.run_dir
        if run_dir is None:
            return
        self._last_checkpoint = self.num_timesteps
        ckpt = run_dir / "checkpoints"
        ckpt.mkdir(exist_ok=True)
        self.model.save(ckpt / "policy.tmp.zip")
        (ckpt / "policy.tmp.zip").replace(ckpt / "policy.zip")
        if self.run.trainer is not None:
            self.run.reward_model.save(ckpt / "reward_model.tmp")
            (ckpt / "reward_model.tmp").replace(ckpt / "reward_model.safetensors")
            torch.save(self.run.trainer.state_dict(), ckpt / "trainer.tmp")
            (ckpt / "trainer.tmp").replace(ckpt / "trainer.pt")
        if isinstance(self.model, OffPolicyAlgorithm):
            self.model.save_replay_buffer(ckpt / "replay_buffer.tmp.pkl")
            (ckpt / "replay_buffer.tmp.pkl").replace(ckpt / "replay_buffer.pkl")
            if self._rb_factors is not None:
                np.save(ckpt / "replay_factors.tmp.npy", self._rb_factors)
                (ckpt / "replay_factors.tmp.npy").replace(ckpt / "replay_factors.npy")
        state = {
            "num_timesteps": self.num_timesteps,
            "metrics_rows": len(self.metrics),
            "elapsed_s": self._elapsed + time.perf_counter() - self._started,
            "last_refit": self._last_refit,
            "rng": self.rng.bit_generator.state,
            "diagnostics": self.diagnostics,
            "complete": self.num_timesteps >= self.cfg.total_timesteps,
        }
        (ckpt / "state.tmp").write_text(json.dumps(state))
        (ckpt / "state.tmp").replace(ckpt / "state.json")

    def restore(self, state: dict[str, Any], metrics: list[dict[str, Any]], ckpt: Path) -> None:
        """Continue counters, RNG, metrics (and replay factors) from a checkpoint."""
        self.metrics = metrics[: state["metrics_rows"]]
        self._elapsed = float(state["elapsed_s"])
        self._last_refit = int(state["last_refit"])
        self._last_eval = self._last_checkpoint = int(state["num_timesteps"])
        self.rng.bit_generator.state = state["rng"]
        self.diagnostics = dict(state["diagnostics"])
        if self.metrics:
            self._last_return = float(self.metrics[-1]["return_mean"])
        factors_file = ckpt / "replay_factors.npy"
        self._restored_rb_factors = np.load(factors_file) if factors_file.exists() else None


def _next_observations(buffer: Any, upto: int) -> np.ndarray:
    if buffer.optimize_memory_usage:
        return buffer.observations[(np.arange(upto) + 1) % buffer.buffer_size]
    return buffer.next_observations[:upto]


def evaluate(model: BaseAlgorithm, env: gym.Env, episodes: int, factor_names: list[str], seed: int) -> dict[str, float]:
    """Mean and std of the env's own episode return, and each factor's mean episode total."""
    returns, totals = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, ret, total = False, 0.0, np.zeros(len(factor_names))
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, info = env.step(action)
            ret += float(reward)
            total += read_factors(info, factor_names, "evaluation env")
            done = terminated or truncated
        returns.append(ret)
        totals.append(total)
    mean_totals = np.mean(totals, axis=0)
    return {
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        **{f"factor/{n}": float(v) for n, v in zip(factor_names, mean_totals, strict=True)},
    }


class _Progress:
    """A rich progress bar: steps, speed, and the latest evaluated return."""

    def __init__(self, total: int, start: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[speed]:>7.0f} steps/s"),
            TextColumn("return {task.fields[ret]}"),
            TimeRemainingColumn(),
        )
        self.task = self.bar.add_task("train", total=total, completed=start, speed=0.0, ret="-")
        self.bar.start()
        self.t0, self.s0 = time.perf_counter(), start

    def update(self, step: int, ret: float) -> None:
        speed = (step - self.s0) / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.update(self.task, completed=step, speed=speed, ret="-" if math.isnan(ret) else f"{ret:.1f}")

    def close(self) -> None:
        self.bar.stop()


@dataclass
class _Run:
    """Everything a run is built from, resolved and validated before anything trains."""

    cfg: RunConfig
    env_fn: Callable[[], gym.Env]
    factor_names: list[str]
    hierarchy: Hierarchy
    learned: bool
    run_dir: Path | None
    progress: bool
    swap: RewardSwap = field(init=False)
    eval_env: gym.Env = field(init=False)
    features: _Features = field(init=False)
    reward_model: RewardModel = field(init=False)
    trainer: BradleyTerryTrainer | None = None
    teacher: Teacher = field(init=False)

    @property
    def eval_every(self) -> int:
        return self.cfg.eval.every or max(self.cfg.total_timesteps // 10, 1)

    @property
    def checkpoint_every(self) -> int:
        return self.cfg.checkpoint_every or self.eval_every

    @property
    def update_every(self) -> int:
        on_policy = issubclass(ALGORITHM_CLASSES[self.cfg.algorithm], OnPolicyAlgorithm)
        return self.cfg.comparison.update_every or (1 if on_policy else 1_000)

    @property
    def columns(self) -> list[str]:
        return report.metric_columns(self.factor_names)

    def signed_weights(self) -> np.ndarray:
        weights = self.cfg.weights or {}
        return np.array([f.sign * weights.get(f.name, 1.0) for f in self.hierarchy.factors], dtype=np.float32)


def _env_factory(env: EnvSpec, env_kwargs: dict[str, Any]) -> tuple[Callable[[], gym.Env], str]:
    if isinstance(env, str):
        return (lambda: make_env(env, **env_kwargs)), env
    if isinstance(env, gym.Env):
        template = env
        return (lambda: copy.deepcopy(template)), type(env).__name__
    if callable(env):
        return env, getattr(env, "__name__", "callable")
    raise ConfigError(f"env must be an env id, a gymnasium.Env or a callable, got {type(env).__name__}")


def _prepare(cfg: RunConfig, env: EnvSpec, run_dir: Path | None, progress: bool) -> _Run:
    env_fn, env_name = _env_factory(env, cfg.env_kwargs)
    probe = env_fn()
    try:
        factor_names = probe_factor_names(probe, cfg.seed, f"env {env_name}")
    finally:
        probe.close()
    if cfg.hierarchy is not None:
        hierarchy = to_hierarchy(cfg.hierarchy)
    elif env_name in REGISTRY:
        hierarchy = REGISTRY[env_name].hierarchy
    else:
        raise ConfigError(f"hierarchy: required for env {env_name} (it has no default ranking)")
    for name in hierarchy.names:
        if name not in factor_names:
            raise ConfigError(
                f"hierarchy: factor {name!r} is not reported by env {env_name} (reported: {', '.join(factor_names)})"
            )
    for name in cfg.weights or {}:
        if name not in hierarchy.names:
            raise ConfigError(f"weights: factor {name!r} is not in the hierarchy ({', '.join(hierarchy.names)})")
    return _Run(cfg, env_fn, hierarchy.names, hierarchy, cfg.method in LEARNED, run_dir, progress)


def _algorithm_kwargs(cfg: RunConfig) -> dict[str, Any]:
    info = REGISTRY.get(cfg.env)
    kwargs = copy.deepcopy(info.algorithm_defaults.get(cfg.algorithm, {})) if info else {}
    kwargs.update(copy.deepcopy(cfg.algorithm_kwargs))
    return kwargs


def _build(run: _Run) -> tuple[VecEnv, dict[str, Any]]:
    cfg = run.cfg
    first = run.env_fn()
    slots = slot_count(first)
    venv: VecEnv
    if slots is None:
        venv = DummyVecEnv([lambda: Monitor(first)] + [lambda: Monitor(run.env_fn())] * (cfg.n_envs - 1))
    elif cfg.n_envs != 1:
        first.close()
        raise ConfigError(f"n_envs: must be 1 for an env with slots ({cfg.env} steps its {slots} slots as one VecEnv)")
    else:
        venv = SlotVecEnv(first)
    venv.seed(cfg.seed)
    if cfg.method == "ground-truth":
        mode = "env"
    elif cfg.method == "weighted-sum":
        mode = "weights"
    else:
        mode = "deferred"
    run.swap = RewardSwap(venv, run.factor_names, mode, run.signed_weights())
    run.eval_env = run.env_fn()
    run.features = _Features(venv.observation_space, venv.action_space, len(run.factor_names), cfg.reward_model.inputs)
    rm = cfg.reward_model
    torch.manual_seed(cfg.seed)
    run.reward_model = RewardModel(run.features.dim, rm.hidden, rm.ensemble, rm.normalize, rm.offset, rm.scale)
    if run.learned:
        run.trainer = BradleyTerryTrainer(
            run.reward_model, TrainerConfig(rm.lr, rm.weight_decay, rm.epochs, rm.batch_size), seed=cfg.seed
        )
        run.teacher = (
            HierarchyTeacher(run.hierarchy) if cfg.method == "heron" else WeightedSumTeacher(run.signed_weights())
        )
    return run.swap, _algorithm_kwargs(cfg)


def _tensorboard(run_dir: Path | None) -> str | None:
    if run_dir is None:
        return None
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    return str(run_dir / "tb")


def _learn(run: _Run, model: BaseAlgorithm, callback: HeronCallback, remaining: int) -> TrainResult:
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=callback, reset_num_timesteps=False, tb_log_name="run")
    else:  # nothing left to train (resuming a finished run): the callback still evaluates and saves
        callback.init_callback(model)
    if not callback.metrics or callback.metrics[-1]["step"] != model.num_timesteps:
        callback._evaluate()
    callback.checkpoint()
    if run.run_dir is not None:
        report.plot_learning_curves(
            {run.cfg.method: [callback.metrics]},
            run.run_dir / "learning_curve.png",
            f"{run.cfg.env} / {run.cfg.algorithm} / {run.cfg.method}",
        )
        model.save(run.run_dir / "policy.zip")
        if run.trainer is not None:
            run.reward_model.save(run.run_dir / "reward_model.safetensors")
    run.swap.close()
    run.eval_env.close()
    return TrainResult(model, run.reward_model if run.learned else None, callback.metrics, run.run_dir, run.cfg)


def run_config(
    cfg: RunConfig, env: EnvSpec | None = None, out: str | Path | None = None, progress: bool = False
) -> TrainResult:
    """Train from a validated config. ``env`` overrides ``cfg.env`` with an object or callable."""
    run_dir = Path(out) if out is not None else None
    run = _prepare(cfg, cfg.env if env is None else env, run_dir, progress)
    venv, kwargs = _build(run)
    if run_dir is not None:
        if (run_dir / "checkpoints" / "state.json").exists():
            raise ConfigError(f"out: {run_dir} already holds a run (resume it with `heron train --resume`)")
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = cfg.model_dump(mode="json")
        resolved["hierarchy"] = [f.model_dump() for f in from_hierarchy(run.hierarchy)]
        resolved["algorithm_kwargs"] = kwargs
        (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    algo = ALGORITHM_CLASSES[cfg.algorithm]
    try:
        model = algo(
            "MlpPolicy",
            venv,
            seed=cfg.seed,
            verbose=0,
            device="cpu",
            tensorboard_log=_tensorboard(run_dir),
            **kwargs,
        )
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"algorithm_kwargs: {cfg.algorithm} rejected them: {err}".splitlines()[0]) from None
    return _learn(run, model, HeronCallback(run), cfg.total_timesteps)


def resume(run_dir: str | Path, progress: bool = False) -> TrainResult:
    """Continue an interrupted run from its last checkpoint."""
    run_dir = Path(run_dir)
    state_file = run_dir / "checkpoints" / "state.json"
    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"resume: {run_dir} holds no config.yaml")
    if not state_file.exists():
        raise ConfigError(f"resume: {run_dir} has no checkpoint yet")
    cfg = validate(yaml.safe_load((run_dir / "config.yaml").read_text()), str(run_dir / "config.yaml"))
    state = json.loads(state_file.read_text())
    run = _prepare(cfg, cfg.env, run_dir, progress)
    venv, _ = _build(run)
    ckpt = run_dir / "checkpoints"
    model = ALGORITHM_CLASSES[cfg.algorithm].load(
        ckpt / "policy.zip", env=venv, device="cpu", tensorboard_log=_tensorboard(run_dir)
    )
    if run.trainer is not None:
        run.reward_model.load_state_dict(RewardModel.load(ckpt / "reward_model.safetensors").state_dict())
        run.trainer.load_state_dict(torch.load(ckpt / "trainer.pt", weights_only=True))
    if isinstance(model, OffPolicyAlgorithm) and (ckpt / "replay_buffer.pkl").exists():
        model.load_replay_buffer(ckpt / "replay_buffer.pkl")
    callback = HeronCallback(run)
    callback.restore(state, report.read_metrics(run_dir / "metrics.csv"), ckpt)
    return _learn(run, model, callback, cfg.total_timesteps - int(state["num_timesteps"]))


def train(
    env: EnvSpec,
    hierarchy: Hierarchy | list[Factor | str | dict[str, Any]] | None = None,
    *,
    algorithm: str = "ppo",
    method: str = "heron",
    total_timesteps: int = 50_000,
    seed: int = 0,
    weights: dict[str, float] | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    **options: Any,
) -> TrainResult:
    """Train an SB3 agent on a reward learned from a ranking of the env's factors.

    :param env: a registered env id (``"heron/Pendulum-v1"``), a ``gymnasium.Env``, or a callable
        returning one; it must report ``info["factors"]``.
    :param hierarchy: the ranking, most important first (None: the env's default ranking).
    :param algorithm: ``ppo``, ``a2c``, ``sac``, ``td3``, ``ddpg`` or ``dqn``.
    :param method: ``heron``, ``ground-truth``, ``weighted-sum`` or ``flat-preference``.
    :param total_timesteps: env steps to train for.
    :param seed: seeds the env, the agent, the reward model and pair sampling.
    :param weights: ``{factor: weight}`` for ``weighted-sum`` and ``flat-preference`` (default 1 each;
        a ``min`` factor counts negatively).
    :param out: a run directory for metrics, checkpoints, TensorBoard logs and the plot.
    :param progress: show a progress bar.
    :param options: further config keys: ``reward_model``, ``comparison``, ``eval``,
        ``algorithm_kwargs``, ``n_envs``, ``env_kwargs``, ``checkpoint_every``.
    """
    data: dict[str, Any] = {
        "env": env if isinstance(env, str) else f"<{type(env).__name__}>",
        "algorithm": algorithm,
        "method": method,
        "total_timesteps": total_timesteps,
        "seed": seed,
        "weights": weights,
        **options,
    }
    if hierarchy is not None:
        if not isinstance(hierarchy, Hierarchy):
            hierarchy = Hierarchy([Factor(**f) if isinstance(f, dict) else f for f in hierarchy])
        data["hierarchy"] = [f.model_dump() for f in from_hierarchy(hierarchy)]
    return run_config(validate(data, "train"), env=env, out=out, progress=progress)
