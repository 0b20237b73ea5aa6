"""Training runs on Stable-Baselines3: config -> env -> agent and HeronLoop -> callbacks -> run directory.

Everything a run is built from is resolved and built before the first step. A run directory holds
only JSON, YAML, CSV, safetensors, weights-only tensor files and pickle-free ``.npz``; resuming
rebuilds the agent from the validated config and loads its numbers (see :mod:`heron.sb3.state`).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from heron import checkpoints, report
from heron.config import RunConfig, from_hierarchy, read_yaml, to_hierarchy, validate
from heron.envs import REGISTRY, make_env
from heron.errors import ConfigError
from heron.factors import env_name, probe_factor_names
from heron.hierarchy import Factor, Hierarchy
from heron.loop import DEFAULT_POOL_STEPS, LEARNED_METHODS, HeronLoop, as_hierarchy, loop_from_config, signed_weights
from heron.reward_model import RewardModel
from heron.sb3.buffers import OffPolicyAdapter, OnPolicyAdapter
from heron.sb3.callbacks import CheckpointCallback, Clock, EvaluationCallback, HeronCallback, ProgressCallback
from heron.sb3.state import algorithm_counters, load_algorithm, load_replay, save_algorithm, save_replay
from heron.sb3.vec_env import RewardSwap, SlotVecEnv, slot_count

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "sac": SAC, "td3": TD3, "ddpg": DDPG, "dqn": DQN}
TORCH_THREADS = 1  # see docs/benchmarks.md, "Torch threads"
EnvSpec = str | gym.Env | Callable[[], gym.Env]


@dataclass
class TrainResult:
    """What :func:`train` returns.

    :param model: the trained SB3 model.
    :param reward_model: the learned reward model (None for ``ground-truth`` and ``weighted-sum``).
    :param metrics: one row per evaluation (see ``metrics.csv``).
    :param run_dir: where the run's files are, if it was given one.
    :param config: the resolved settings the run used (what its ``config.yaml`` says).
    :param loop: the HERON loop the reward was learned in (None without a learned reward).
    """

    model: BaseAlgorithm
    reward_model: RewardModel | None
    metrics: list[dict[str, Any]]
    run_dir: Path | None = None
    config: RunConfig | None = field(default=None, repr=False)
    loop: HeronLoop | None = field(default=None, repr=False)

    @property
    def final_return(self) -> float:
        """Mean ground-truth return of the last evaluation."""
        return float(self.metrics[-1]["return_mean"]) if self.metrics else math.nan


def _env_factory(env: EnvSpec, env_kwargs: dict[str, Any]) -> Callable[[], gym.Env]:
    if isinstance(env, str):
        return lambda: make_env(env, **env_kwargs)
    if isinstance(env, gym.Env):
        template = env
        return lambda: copy.deepcopy(template)
    if callable(env):
        return env
    raise ConfigError(f"env must be an env id, a gymnasium.Env or a callable, got {type(env).__name__}")


def _class_default(algorithm: type[BaseAlgorithm], name: str) -> Any:
    return inspect.signature(algorithm.__init__).parameters[name].default


def _int_setting(kwargs: dict[str, Any], algorithm: type[BaseAlgorithm], name: str) -> int:
    value = kwargs.get(name, _class_default(algorithm, name))
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"algorithm_kwargs.{name}: must be an integer, got {value!r}")
    return value


def resolve(cfg: RunConfig, env: EnvSpec, factor_names: list[str], made: str) -> RunConfig:
    """The config with every "0: pick a default" setting, the ranking and the agent's settings filled in.

    :param factor_names: the factors the env reports; :param made: what the env is called.
    """
    if cfg.hierarchy is not None:
        hierarchy = to_hierarchy(cfg.hierarchy)
    elif isinstance(env, str) and env in REGISTRY:
        hierarchy = REGISTRY[env].hierarchy
    else:
        raise ConfigError(f"hierarchy: required for env {made} (it has no default ranking)")
    for name in hierarchy.names:
        if name not in factor_names:
            raise ConfigError(
                f"hierarchy: factor {name!r} is not reported by env {made} (reported: {', '.join(factor_names)})"
            )
    for name in cfg.weights or {}:
        if name not in hierarchy.names:
            raise ConfigError(f"weights: factor {name!r} is not in the hierarchy ({', '.join(hierarchy.names)})")
    info = REGISTRY.get(cfg.env)
    kwargs = copy.deepcopy(info.algorithm_defaults.get(cfg.algorithm, {})) if info else {}
    kwargs.update(copy.deepcopy(cfg.algorithm_kwargs))
    algorithm = ALGORITHMS[cfg.algorithm]
    comparison = cfg.comparison
    pool_steps = comparison.pool_steps or DEFAULT_POOL_STEPS
    if issubclass(algorithm, OnPolicyAlgorithm):  # the pool holds at least one rollout; a refit per rollout
        pool_steps = max(pool_steps, _int_setting(kwargs, algorithm, "n_steps"))
        update_every, warmup = comparison.update_every or 1, comparison.warmup_steps
    else:  # no refit before the agent starts learning
        update_every = comparison.update_every or 1_000
        warmup = max(comparison.warmup_steps, _int_setting(kwargs, algorithm, "learning_starts"))
    eval_every = cfg.eval.every or max(cfg.total_timesteps // 10, 1)
    data = cfg.model_dump(mode="json")
    data |= {
        "env": cfg.env if isinstance(env, str) else f"<{made}>",
        "hierarchy": [f.model_dump() for f in from_hierarchy(hierarchy)],
        "algorithm_kwargs": kwargs,
        "checkpoint_every": cfg.checkpoint_every or eval_every,
    }
    data["eval"]["every"] = eval_every
    data["comparison"] |= {"pool_steps": pool_steps, "update_every": update_every, "warmup_steps": warmup}
    return validate(data, "config")


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Run:
    """One training run, built whole from a resolved config before anything trains."""

    def __init__(self, cfg: RunConfig, env_fn: Callable[[], gym.Env], run_dir: Path | None, progress: bool) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.hierarchy = to_hierarchy(cfg.hierarchy or ())
        self.factor_names = self.hierarchy.names
        self.swap = self._vec_env(env_fn)
        self.eval_env = env_fn()
        learned = cfg.method in LEARNED_METHODS
        self.loop: HeronLoop | None = None
        if learned:
            self.loop = loop_from_config(cfg, self.swap.observation_space, self.swap.action_space, self.swap.num_envs)
        self.model = self._algorithm()
        self.adapter: OnPolicyAdapter | OffPolicyAdapter | None = None
        callbacks: list[Any] = []
        if self.loop is not None:
            on_policy = isinstance(self.model, OnPolicyAlgorithm)
            self.adapter = (OnPolicyAdapter if on_policy else OffPolicyAdapter)(self.model, self.loop)
            callbacks.append(HeronCallback(self.loop, self.swap, self.adapter))
        self.clock = Clock()
        loop = self.loop
        self.evaluation = EvaluationCallback(
            self.eval_env,
            self.factor_names,
            cfg.eval.episodes,
            cfg.eval.every,
            cfg.seed,
            report.metric_columns(self.factor_names),
            None if run_dir is None else run_dir / "metrics.csv",
            self.clock,
            (lambda: loop.diagnostics) if loop is not None else dict,
        )
        callbacks.append(self.evaluation)
        self.checkpoints = CheckpointCallback(cfg.checkpoint_every, self.checkpoint)
        if run_dir is not None:
            callbacks.append(self.checkpoints)
        if progress:
            callbacks.append(ProgressCallback(cfg.total_timesteps, lambda: self.evaluation.last_return))
        self.callback = CallbackList(callbacks)

    def _vec_env(self, env_fn: Callable[[], gym.Env]) -> RewardSwap:
        cfg = self.cfg
        first = env_fn()
        slots = slot_count(first)
        venv: VecEnv
        if slots is None:
            venv = DummyVecEnv([lambda: Monitor(first)] + [lambda: Monitor(env_fn())] * (cfg.n_envs - 1))
        elif cfg.n_envs != 1:
            first.close()
            raise ConfigError(
                f"n_envs: must be 1 for an env with slots ({cfg.env} steps its {slots} slots as one VecEnv)"
            )
        else:
            venv = SlotVecEnv(first)
        venv.seed(cfg.seed)
        mode = {"ground-truth": "env", "weighted-sum": "weights"}.get(cfg.method, "deferred")
        return RewardSwap(venv, self.factor_names, mode, signed_weights(self.hierarchy, cfg.weights))

    def _algorithm(self) -> BaseAlgorithm:
        cfg, run_dir = self.cfg, self.run_dir
        settings: dict[str, Any] = {"seed": cfg.seed, "verbose": 0, "device": "cpu", "tensorboard_log": None}
        if run_dir is not None:
            settings["tensorboard_log"] = str(run_dir / "tb")
        reserved = sorted(set(settings) & set(cfg.algorithm_kwargs))
        if reserved:
            raise ConfigError(f"algorithm_kwargs.{reserved[0]}: set by heron, not by the algorithm's settings")
        settings |= cfg.algorithm_kwargs
        try:
            return ALGORITHMS[cfg.algorithm]("MlpPolicy", self.swap, **settings)
        except (TypeError, ValueError, AssertionError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if "as action spaces" in message or "observation space" in message.lower():
                space = self.swap.action_space if "action" in message else self.swap.observation_space
                raise ConfigError(f"{cfg.algorithm} does not support the env's space {space}: {message}") from None
            raise ConfigError(f"algorithm_kwargs: {cfg.algorithm} rejected them: {message}") from None

    # -- checkpoints --------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Write one checkpoint set of everything needed to resume (pickle-free)."""
        assert self.run_dir is not None
        model, loop = self.model, self.loop
        files: dict[str, Callable[[Path], None]] = {"algorithm.pt": lambda path: save_algorithm(model, path)}
        if loop is not None:
            files["loop.pt"] = lambda path: torch.save(loop.state_dict(), path)
        if isinstance(model, OffPolicyAlgorithm):
            files["replay.npz"] = lambda path: save_replay(model, path, self._replay_extra())
        state = {
            "num_timesteps": model.num_timesteps,
            "complete": model.num_timesteps >= self.cfg.total_timesteps,
            "counters": algorithm_counters(model),
            "evaluation": self.evaluation.state_dict(),
            "elapsed_s": self.clock(),
            "config": self.cfg.model_dump(mode="json"),
        }
        checkpoints.write(self.run_dir, files, state)

    def _replay_extra(self) -> dict[str, np.ndarray]:
        adapter = self.adapter
        if isinstance(adapter, OffPolicyAdapter) and adapter.replay_factors is not None:
            return {"factors": adapter.replay_factors}
        return {}

    def restore(self, ckpt: checkpoints.Checkpoint) -> None:
        """Continue from a verified checkpoint set of this run."""
        state = ckpt.state
        try:
            steps = int(state["num_timesteps"])
            counters = dict(state["counters"])
            evaluation = dict(state["evaluation"])
            elapsed = float(state["elapsed_s"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{ckpt.path / checkpoints.STATE}: is missing counters") from None
        if steps < 0 or counters.get("num_timesteps") != steps or not math.isfinite(elapsed):
            raise ConfigError(f"{ckpt.path / checkpoints.STATE}: counters do not agree")
        load_algorithm(self.model, ckpt.file("algorithm.pt"), counters)
        if self.loop is not None:
            self.loop.load_state_dict(checkpoints.load_tensors(ckpt.file("loop.pt")))
        if isinstance(self.model, OffPolicyAlgorithm):
            load_replay(self.model, ckpt.file("replay.npz"), self._replay_extra())
        assert self.run_dir is not None
        metrics = report.read_metrics(self.run_dir / "metrics.csv")
        if len(metrics) < int(evaluation.get("rows", 0)):
            raise ConfigError(f"{self.run_dir / 'metrics.csv'}: holds fewer evaluations than its checkpoint")
        self.evaluation.load_state_dict(evaluation, metrics)
        self.checkpoints.last = steps
        self.clock.before = elapsed

    # -- training -----------------------------------------------------------------------------------
    def learn(self) -> TrainResult:
        """Train to ``total_timesteps`` (SB3 rounds up to whole rollouts), evaluate, checkpoint, write outputs."""
        cfg, model = self.cfg, self.model
        remaining = max(cfg.total_timesteps - model.num_timesteps, 0)
        with _torch_threads(TORCH_THREADS):
            # With nothing left (a finished run resumed) learn still runs the callbacks' training end.
            model.learn(total_timesteps=remaining, callback=self.callback, reset_num_timesteps=False, tb_log_name="run")
        if self.run_dir is not None:
            report.plot_learning_curves(
                {cfg.method: [self.evaluation.metrics]},
                self.run_dir / "learning_curve.png",
                f"{cfg.env} / {cfg.algorithm} / {cfg.method}",
            )
            model.save(self.run_dir / "policy.zip")  # SB3's own format, for users; heron never loads it
            if self.loop is not None:
                self.loop.reward_model.save(self.run_dir / "reward_model.safetensors")
        self.swap.close()
        self.eval_env.close()
        reward_model = self.loop.reward_model if self.loop is not None else None
        return TrainResult(model, reward_model, self.evaluation.metrics, self.run_dir, cfg, self.loop)


def _build(cfg: RunConfig, env: EnvSpec, run_dir: Path | None, progress: bool) -> Run:
    env_fn = _env_factory(env, cfg.env_kwargs)
    try:
        probe = env_fn()
    except ConfigError:
        raise
    except Exception as err:  # an env that cannot be made with these settings
        raise ConfigError(
            f"env_kwargs: the env could not be made: {type(err).__name__}: {err}".splitlines()[0]
        ) from None
    made = cfg.env if isinstance(env, str) else env_name(probe)
    try:
        factor_names = probe_factor_names(probe, cfg.seed, f"env {made}")
    finally:
        probe.close()
    return Run(resolve(cfg, env, factor_names, made), env_fn, run_dir, progress)


def run_config(
    cfg: RunConfig, env: EnvSpec | None = None, out: str | Path | None = None, progress: bool = False
) -> TrainResult:
    """Train from a validated config. ``env`` overrides ``cfg.env`` with an object or callable."""
    run_dir = Path(out) if out is not None else None
    if run_dir is not None and (run_dir / "checkpoints").exists():
        raise ConfigError(f"out: {run_dir} already holds a run (resume it with `heron train --resume`)")
    run = _build(cfg, cfg.env if env is None else env, run_dir, progress)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(run.cfg.model_dump(mode="json"), sort_keys=False))
    return run.learn()


def resume(run_dir: str | Path, progress: bool = False) -> TrainResult:
    """Continue an interrupted run from its last checkpoint (a finished run is left as it is)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"resume: {run_dir} does not exist")
    config_file = run_dir / "config.yaml"
    if not config_file.exists():
        raise ConfigError(f"resume: {run_dir} holds no config.yaml")
    cfg = validate(read_yaml(config_file), str(config_file))
    ckpt = checkpoints.latest(run_dir)
    if ckpt is None:
        raise ConfigError(f"resume: {run_dir} has no checkpoint yet")
    run = _build(cfg, cfg.env, run_dir, progress)
    saved = ckpt.state.get("config")
    if not isinstance(saved, dict):
        raise ConfigError(f"resume: the checkpoint of {run_dir} records no config")
    current = run.cfg.model_dump(mode="json")
    changed = sorted(
        k for k in current.keys() | saved.keys() if k != "total_timesteps" and current.get(k) != saved.get(k)
    )
    if changed:
        raise ConfigError(f"resume: {config_file} no longer matches its checkpoint ({', '.join(changed)} changed)")
    run.restore(ckpt)
    return run.learn()


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
    :param total_timesteps: env steps to train for (on-policy agents train whole rollouts, so the
        total rounds up to a multiple of ``n_steps * n_envs``).
    :param seed: seeds the env, the agent, the reward model and pair sampling.
    :param weights: ``{factor: weight}`` for ``weighted-sum`` and ``flat-preference`` (default 1 each;
        a ``min`` factor counts negatively).
    :param out: a run directory for metrics, checkpoints, TensorBoard logs and the plot.
    :param progress: show progress (a bar on a terminal, a line every 30 s otherwise).
    :param options: further config keys: ``reward_model``, ``comparison``, ``eval``,
        ``algorithm_kwargs``, ``n_envs``, ``env_kwargs``, ``checkpoint_every``.
    """
    data: dict[str, Any] = {
        "env": env if isinstance(env, str) else "<env>",
        "algorithm": algorithm,
        "method": method,
        "total_timesteps": total_timesteps,
        "seed": seed,
        "weights": weights,
        **options,
    }
    if hierarchy is not None:
        data["hierarchy"] = [f.model_dump() for f in from_hierarchy(as_hierarchy(hierarchy))]
    return run_config(validate(data, "train"), env=env, out=out, progress=progress)
