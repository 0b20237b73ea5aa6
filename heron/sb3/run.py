"""Training runs on Stable-Baselines3: config -> env -> agent and HeronLoop -> callbacks -> run directory.

Everything a run is built from is resolved and built before the first step. A run directory holds
only JSON, YAML, CSV, safetensors, weights-only tensor files and pickle-free ``.npz``; resuming
rebuilds the agent from the validated config and loads its numbers (see :mod:`heron.sb3.state`).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from heron import checkpoints, report
from heron.config import RunConfig, from_hierarchy, load_run, to_hierarchy, validate
from heron.envs import REGISTRY, make_env
from heron.errors import ConfigError
from heron.factors import env_name, probe_factor_names
from heron.hierarchy import Factor, Hierarchy
from heron.loop import (
    DEFAULT_POOL_STEPS,
    LEARNED_METHODS,
    HeronLoop,
    as_hierarchy,
    loop_from_config,
    loop_memory,
    signed_weights,
)
from heron.resources import ADAM, FLOAT, check_memory, mlp_parameters
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
        try:  # each parallel and evaluation env is a copy: find out now whether one can be made
            copy.deepcopy(template).close()
        except Exception as err:
            raise ConfigError(
                f"env: {env_name(template)} cannot be copied ({type(err).__name__}: {err}); heron makes a copy "
                "for each parallel and evaluation env, so pass a callable that makes the env instead".splitlines()[0]
            ) from None
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


# Settings SB3 stores at construction and first uses in training: their ranges, checked up front.
# name -> (lowest, highest, whether the lowest itself is allowed); None: no bound.
_RANGES: dict[str, tuple[float, float | None, bool]] = {
    "gamma": (0.0, 1.0, True),
    "gae_lambda": (0.0, 1.0, True),
    "tau": (0.0, 1.0, True),
    "exploration_fraction": (0.0, 1.0, True),
    "exploration_initial_eps": (0.0, 1.0, True),
    "exploration_final_eps": (0.0, 1.0, True),
    "learning_rate": (0.0, None, False),
    "clip_range": (0.0, None, False),
    "clip_range_vf": (0.0, None, False),
    "ent_coef": (0.0, None, True),
    "vf_coef": (0.0, None, True),
    "max_grad_norm": (0.0, None, False),
    "target_kl": (0.0, None, False),
    "n_steps": (1, None, True),
    "batch_size": (1, None, True),
    "n_epochs": (1, None, True),
    "buffer_size": (1, None, True),
    "learning_starts": (0, None, True),
    "target_update_interval": (1, None, True),
    "sde_sample_freq": (-1, None, True),
}


def check_algorithm_kwargs(algorithm: type[BaseAlgorithm], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``algorithm_kwargs`` checked against the algorithm's own signature: types and ranges.

    SB3 stores most settings at construction and first uses them in training (``gamma: .nan``,
    ``n_epochs: ten``), so each value is validated here against the annotation SB3 gives it, and
    the common settings against their ranges. A list where SB3 wants a tuple (``train_freq: [4,
    step]`` from YAML) becomes a tuple.

    :returns: the settings to pass on.
    :raises ConfigError: naming the first setting that SB3 would fail on.
    """
    from pydantic import ConfigDict, TypeAdapter, ValidationError

    parameters = inspect.signature(algorithm.__init__).parameters
    checked = {}
    for name, value in kwargs.items():  # every float is finite already (RunConfig checks the kwargs)
        where = f"algorithm_kwargs.{name}"
        parameter = parameters.get(name)
        if parameter is not None and parameter.annotation is not inspect.Parameter.empty:
            adapter = TypeAdapter(parameter.annotation, config=ConfigDict(arbitrary_types_allowed=True))
            for candidate in (value, tuple(value)) if isinstance(value, list) else (value,):
                try:
                    adapter.validate_python(candidate, strict=True)
                except ValidationError:
                    continue
                value = candidate
                break
            else:
                annotation = parameter.annotation
                expected = annotation.__name__ if isinstance(annotation, type) else str(annotation)
                expected = expected.replace("collections.abc.", "").replace("typing.", "")
                raise ConfigError(f"{where}: expected {expected}, got {value!r}")
        if name in _RANGES and isinstance(value, int | float) and not isinstance(value, bool):
            low, high, low_allowed = _RANGES[name]
            if value < low or (value == low and not low_allowed) or (high is not None and value > high):
                bounds = f"[{low:g}, {high:g}]" if high is not None else f"{'>=' if low_allowed else '>'} {low:g}"
                raise ConfigError(f"{where}: must be {'in ' if high is not None else ''}{bounds}, got {value!r}")
        checked[name] = value
    return checked


_DEFAULT_NETS = {"sac": [256, 256], "td3": [400, 300], "ddpg": [400, 300]}  # SB3's; the others use 64-64


def _net_widths(net_arch: Any, default: list[int]) -> dict[str, list[int]]:
    """Hidden widths of each head from SB3's ``net_arch`` (a list, or a dict of lists per head)."""
    if isinstance(net_arch, Mapping):
        return {str(k): [int(w) for w in v] for k, v in net_arch.items() if isinstance(v, Sequence)}
    if isinstance(net_arch, Sequence):
        return {"net": [int(w) for w in net_arch if isinstance(w, int)]}
    return {"net": default}


def _space_size(space: Any) -> tuple[int, int]:
    """Values and bytes of one element of a space as SB3's buffers store it (a Dict: the sum of its parts)."""
    if isinstance(space, gym.spaces.Dict):
        sizes = [_space_size(sub) for sub in space.spaces.values()]
        return sum(v for v, _ in sizes), sum(b for _, b in sizes)
    values = int(np.prod(getattr(space, "shape", ()) or (1,), dtype=np.int64))
    return values, values * np.dtype(getattr(space, "dtype", None) or np.float32).itemsize


def agent_memory(cfg: RunConfig, observation_space: Any, action_space: Any, n_envs: int) -> dict[str, tuple[int, str]]:
    """The agent's large arrays in bytes, by the setting that sizes them (see :func:`heron.resources.check_memory`);
    a Dict observation counts the sum of its sub-spaces."""
    kwargs = cfg.algorithm_kwargs
    algorithm = ALGORITHMS[cfg.algorithm]
    obs_floats, obs_bytes = _space_size(observation_space)
    act_floats, _ = _space_size(action_space)
    on_policy = issubclass(algorithm, OnPolicyAlgorithm)
    policy_kwargs = kwargs.get("policy_kwargs") or {}
    default = _DEFAULT_NETS.get(cfg.algorithm, [64, 64])
    heads = _net_widths(policy_kwargs.get("net_arch") if isinstance(policy_kwargs, Mapping) else None, default)
    # Actor and critic(s), target copies for off-policy agents, each with Adam's state.
    copies = 2 if on_policy else 6
    parameters = copies * max(mlp_parameters([obs_floats + act_floats, *w, act_floats]) for w in heads.values())
    parts = {
        "algorithm_kwargs.policy_kwargs": (
            parameters * FLOAT * ADAM,
            f"networks {heads} on {obs_floats} observation and {act_floats} action floats: {parameters:,} parameters",
        )
    }
    if on_policy:
        steps = _int_setting(kwargs, algorithm, "n_steps") * n_envs
        parts["algorithm_kwargs.n_steps"] = (
            steps * (obs_floats + act_floats + 6) * FLOAT,
            f"a rollout of {steps:,} steps",
        )
    else:
        rows = _int_setting(kwargs, algorithm, "buffer_size")
        parts["algorithm_kwargs.buffer_size"] = (
            rows * (2 * obs_bytes + (act_floats + 3 + len(cfg.hierarchy or ())) * FLOAT),
            f"a replay buffer of {rows:,} steps",
        )
    return parts


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
    kwargs = check_algorithm_kwargs(algorithm, kwargs)
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


SB3_SPACES = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)


def check_spaces(observation_space: gym.Space, action_space: gym.Space) -> None:
    """Refuse, in one line, spaces SB3 cannot train on before it meets them: it takes Box, Discrete,
    MultiDiscrete and MultiBinary (starting at 0), and observations that are a Dict of those."""
    observations = (
        observation_space.spaces if isinstance(observation_space, gym.spaces.Dict) else {"": observation_space}
    )
    named = [(f"observation space{'.' if k else ''}{k}", s) for k, s in observations.items()]
    for what, space in [*named, ("action space", action_space)]:
        if not isinstance(space, SB3_SPACES):
            raise ConfigError(
                f"{what}: {type(space).__name__} is not supported (SB3 trains on Box, Discrete, MultiDiscrete, "
                "MultiBinary, and observations that are a Dict of them)"
            )
        if np.any(getattr(space, "start", 0) != 0):
            raise ConfigError(f"{what}: {space} does not start at 0, which SB3 needs (it one-hot encodes from 0)")


def default_policy(observation_space: gym.Space) -> str:
    """The SB3 policy for an observation space: ``MultiInputPolicy`` for a Dict, ``CnnPolicy`` for an
    image (SB3's ``is_image_space``), ``MlpPolicy`` otherwise (``algorithm_kwargs.policy`` overrides it)."""
    if isinstance(observation_space, gym.spaces.Dict):
        return "MultiInputPolicy"
    return "CnnPolicy" if is_image_space(observation_space) else "MlpPolicy"


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Run:
    """One training run, built whole from a resolved config before anything trains.

    :param on_checkpoint: called with each checkpoint set's folder once ``LATEST`` names it.
    """

    def __init__(
        self,
        cfg: RunConfig,
        env_fn: Callable[[], gym.Env],
        run_dir: Path | None,
        progress: bool,
        on_checkpoint: Callable[[Path], None] | None = None,
    ) -> None:
        self.cfg, self.run_dir, self.on_checkpoint = cfg, run_dir, on_checkpoint
        self.hierarchy = to_hierarchy(cfg.hierarchy or ())
        self.factor_names = self.hierarchy.names
        self.swap = self._vec_env(env_fn)
        self.eval_env = env_fn()
        self.loop: HeronLoop | None = None
        if cfg.method in LEARNED_METHODS:  # the loop checks its own memory before allocating it
            self.loop = loop_from_config(cfg, self.swap.observation_space, self.swap.action_space, self.swap.num_envs)
        parts = agent_memory(cfg, self.swap.observation_space, self.swap.action_space, self.swap.num_envs)
        if self.loop is not None:
            parts |= loop_memory(cfg.reward_model, cfg.comparison, self.loop.encoding, self.swap.num_envs)
        check_memory(parts)  # the agent's part, with the loop's, before the agent allocates it
        self.model = self._algorithm()
        self.adapter: OnPolicyAdapter | OffPolicyAdapter | None = None
        callbacks: list[Any] = []
        if self.loop is not None:
            on_policy = isinstance(self.model, OnPolicyAlgorithm)
            self.adapter = (OnPolicyAdapter if on_policy else OffPolicyAdapter)(self.model, self.loop)
            callbacks.append(HeronCallback(self.loop, self.swap, self.adapter))
        self.clock = Clock()
        loop, swap = self.loop, self.swap
        self.evaluation = EvaluationCallback(
            self.eval_env,
            self.factor_names,
            cfg.eval.episodes,
            cfg.eval.every,
            cfg.seed,
            report.metric_columns(self.factor_names),
            None if run_dir is None else run_dir / "metrics.csv",
            self.clock,
            lambda: {**(loop.diagnostics if loop is not None else {}), "nonfinite_steps": swap.nonfinite_steps},
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
        algorithm = ALGORITHMS[cfg.algorithm]
        policy = settings.pop("policy") if "policy" in settings else default_policy(self.swap.observation_space)
        if policy not in algorithm.policy_aliases:
            choices = ", ".join(algorithm.policy_aliases)
            raise ConfigError(f"algorithm_kwargs.policy: {cfg.algorithm} has the policies {choices}, got {policy!r}")
        try:
            return algorithm(policy, self.swap, **settings)
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
            "nonfinite_steps": self.swap.nonfinite_steps,
            "evaluation": self.evaluation.state_dict(),
            "elapsed_s": self.clock(),
            "config": self.cfg.model_dump(mode="json"),
        }
        written = checkpoints.write(self.run_dir, files, state)
        if self.on_checkpoint is not None:
            self.on_checkpoint(written)

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
            nonfinite = int(state["nonfinite_steps"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{ckpt.path / checkpoints.STATE}: is missing counters") from None
        if steps < 0 or counters.get("num_timesteps") != steps or not math.isfinite(elapsed):
            raise ConfigError(f"{ckpt.path / checkpoints.STATE}: counters do not agree")
        load_algorithm(self.model, ckpt.file("algorithm.pt"), counters)
        if self.loop is not None:
            self.loop.load_state_dict(checkpoints.load_tensors(ckpt.file("loop.pt")))
        if isinstance(self.model, OffPolicyAlgorithm):
            load_replay(self.model, ckpt.file("replay.npz"), self._replay_extra())
        try:
            self.evaluation.load_state_dict(evaluation)
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{ckpt.path / checkpoints.STATE}: its evaluations do not fit this run") from None
        self.checkpoints.last = steps
        self.clock.before = elapsed
        self.swap.nonfinite_steps = nonfinite

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


def _build(
    cfg: RunConfig,
    env: EnvSpec,
    run_dir: Path | None,
    progress: bool,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> Run:
    env_fn = _env_factory(env, cfg.env_kwargs)
    try:
        probe = env_fn()
    except ConfigError:
        raise
    except Exception as err:  # an env that cannot be made with these settings
        raise ConfigError(
            f"env_kwargs: the env could not be made: {type(err).__name__}: {err}".splitlines()[0]
        ) from None
    if not isinstance(probe, gym.Env):
        raise ConfigError(f"env: the env factory returned {type(probe).__name__}, not a gymnasium.Env")
    made = cfg.env if isinstance(env, str) else env_name(probe)
    try:
        check_spaces(probe.observation_space, probe.action_space)
        factor_names = probe_factor_names(probe, cfg.seed, f"env {made}")
    finally:
        probe.close()
    return Run(resolve(cfg, env, factor_names, made), env_fn, run_dir, progress, on_checkpoint)


def run_config(
    cfg: RunConfig,
    env: EnvSpec | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train from a validated config. ``env`` overrides ``cfg.env`` with an object or callable;
    ``on_checkpoint`` is called with each checkpoint set's folder once ``LATEST`` names it."""
    run_dir = Path(out) if out is not None else None
    created = _prepare_out(run_dir) if run_dir is not None else False
    try:
        run = _build(cfg, cfg.env if env is None else env, run_dir, progress, on_checkpoint)
    except BaseException:
        if created and run_dir is not None and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that never started leaves no directory behind
        raise
    if run_dir is not None:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(run.cfg.model_dump(mode="json"), sort_keys=False))
    return run.learn()


RUN_FILES = ("config.yaml", "metrics.csv", "checkpoints", "tb", "policy.zip", "reward_model.safetensors")


def _prepare_out(run_dir: Path) -> bool:
    """Make sure a new run can write to ``run_dir`` and would overwrite nothing; True when it was created."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"out: {run_dir} is a file, not a directory")
    if (run_dir / "checkpoints" / checkpoints.LATEST).exists():
        raise ConfigError(f"out: {run_dir} already holds a run (resume it with `heron train --resume`)")
    left = [name for name in RUN_FILES if (run_dir / name).exists()]
    if left:
        raise ConfigError(
            f"out: {run_dir} holds {left[0]} of a run that stopped before its first checkpoint "
            "(nothing to resume: delete it or choose another directory)"
        )
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".heron-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"out: cannot write to {run_dir}: {err.strerror or type(err).__name__}") from None
    return created


def resume(
    run_dir: str | Path, progress: bool = False, on_checkpoint: Callable[[Path], None] | None = None
) -> TrainResult:
    """Continue an interrupted run from its last checkpoint (a finished run is left as it is);
    ``on_checkpoint`` as in :func:`run_config`."""
    run_dir, cfg = load_run(run_dir, "resume")
    config_file = run_dir / "config.yaml"
    ckpt = checkpoints.latest(run_dir)
    if ckpt is None:
        raise ConfigError(f"resume: {run_dir} has no checkpoint yet")
    saved = ckpt.state.get("config")
    if not isinstance(saved, dict):
        raise ConfigError(f"resume: the checkpoint of {run_dir} records no config")
    _same_config(cfg, saved, config_file)  # config.yaml is the resolved config: compare before building
    run = _build(cfg, cfg.env, run_dir, progress, on_checkpoint)
    _same_config(run.cfg, saved, config_file)  # and what this version of heron resolves it to
    run.restore(ckpt)
    return run.learn()


def _same_config(cfg: RunConfig, saved: dict[str, Any], config_file: Path) -> None:
    """Refuse a config that differs from the checkpoint's in any setting but ``total_timesteps``."""
    current = cfg.model_dump(mode="json")
    changed = sorted(
        k for k in current.keys() | saved.keys() if k != "total_timesteps" and current.get(k) != saved.get(k)
    )
    if changed:
        raise ConfigError(f"resume: {config_file} no longer matches its checkpoint ({', '.join(changed)} changed)")


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
