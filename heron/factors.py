"""What a factor is to an environment: a named float reported each step in ``info["factors"]``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from heron.envs import MO_PREFIX, make_env
from heron.errors import ConfigError, FactorError

FactorFn = Callable[[Any, Any, Any, SupportsFloat, dict[str, Any]], float]
"""``fn(obs, action, next_obs, reward, info) -> float``: one factor of one transition."""


class FactorWrapper(gym.Wrapper):
    """Adds factors to any environment's ``info["factors"]``.

    Factors already reported by the wrapped environment are kept; a factor computed here replaces a
    reported one of the same name. The environment's reward is left unchanged.

    :param env: the environment to wrap.
    :param factors: ``{name: fn}`` with ``fn(obs, action, next_obs, reward, info) -> float``, where
        ``obs`` is the observation before the step and ``next_obs`` the one after it.
    """

    def __init__(self, env: gym.Env, factors: Mapping[str, FactorFn]) -> None:
        super().__init__(env)
        if not factors:
            raise FactorError("FactorWrapper needs at least one factor function")
        for name, fn in factors.items():
            if not isinstance(name, str) or not name:
                raise FactorError(f"factor names must be non-empty strings, got {name!r}")
            if not callable(fn):
                raise FactorError(f"factor {name!r}: expected a callable, got {type(fn).__name__}")
        self._factor_fns = dict(factors)
        self._last_obs: Any = None

    @property
    def factor_names(self) -> list[str]:
        """Names of the factors this wrapper adds."""
        return list(self._factor_fns)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._last_obs = obs
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info)
        info["factors"] = {
            **info.get("factors", {}),
            **{
                name: float(fn(self._last_obs, action, next_obs, reward, info)) for name, fn in self._factor_fns.items()
            },
        }
        self._last_obs = next_obs
        return next_obs, reward, terminated, truncated, info


REWARD_PREFIX = "reward_"


class RewardInfoFactors(gym.Wrapper):
    """Reports the reward components an env puts in its info as factors.

    Each step, every ``info["reward_<name>"]`` entry is copied into ``info["factors"]["<name>"]``
    with the sign the env reports it with (Gymnasium's MuJoCo envs report costs as negative
    ``reward_ctrl`` and ``reward_contact``), so the factors sum to the env reward wherever the env's
    components do. Factors the env already reports in ``info["factors"]`` are kept, and win over a
    ``reward_*`` entry of the same name. The env's reward is left unchanged.

    :param env: the environment to wrap.
    :param name: how errors name the env (default: its Gymnasium id, else its class name).
    :raises FactorError: at a step whose info has no ``reward_*`` entry, or a non-numeric one.
    """

    def __init__(self, env: gym.Env, name: str | None = None) -> None:
        super().__init__(env)
        self.name = name or env_name(env)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        components: dict[str, float] = {}
        for key, value in info.items():
            if isinstance(key, str) and key.startswith(REWARD_PREFIX) and len(key) > len(REWARD_PREFIX):
                try:
                    components[key[len(REWARD_PREFIX) :]] = float(value)
                except (TypeError, ValueError):
                    raise FactorError(
                        f"env {self.name} reported info[{key!r}] that is not a number ({type(value).__name__})"
                    ) from None
        if not components:
            raise FactorError(
                f"env {self.name} reports no reward_* entries in its info: heron.factorize cannot find its"
                " reward components (use heron.FactorWrapper)"
            )
        info = dict(info)
        info["factors"] = {**components, **info.get("factors", {})}
        return obs, reward, terminated, truncated, info


def env_name(env: gym.Env) -> str:
    """What an env is called in messages: its Gymnasium id, else its class name."""
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__


Utility = Sequence[float] | Callable[[np.ndarray], float]
"""How a vector reward becomes the scalar env reward: weights (a dot product) or ``fn(vector) -> float``."""


def reward_space(env: gym.Env) -> gym.spaces.Box | None:
    """The vector-reward space of an MO-Gymnasium env (``env.unwrapped.reward_space``), or None."""
    space = getattr(env.unwrapped, "reward_space", None)
    return space if isinstance(space, gym.spaces.Box) and len(space.shape) == 1 else None


class ObjectiveFactors(FactorWrapper):
    """Makes a vector-reward (MO-Gymnasium) env a factorized env: objective ``i`` is a factor.

    A :class:`FactorWrapper` whose factor ``objectives[i]`` is component ``i`` of the step's vector
    reward (every objective, ranked or not; an objective wins over a factor the env already reports
    under the same name), and whose env reward becomes one number: the ``utility`` of the vector, or
    the sum of its components when no utility is given (MO-Gymnasium's ``LinearReward`` default).

    :param env: an env with a 1-D ``Box`` ``reward_space`` whose step reward is a vector.
    :param objectives: a name per component, in order (default ``obj0``, ``obj1``, ...).
    :param utility: weights, one per objective, or a callable on the vector returning a float.
    :param name: how errors name the env (default: its Gymnasium id, else its class name).
    :raises ConfigError: for a wrong number of names or weights, a name given twice, a bad utility.
    """

    def __init__(
        self,
        env: gym.Env,
        objectives: Sequence[str] | None = None,
        utility: Utility | None = None,
        name: str | None = None,
    ) -> None:
        name = name or env_name(env)
        space = reward_space(env)
        if space is None:
            raise ConfigError(f"objectives: env {name} has no vector reward_space (not a multi-objective env)")
        size = int(space.shape[0])
        if objectives is None:
            objectives = [f"obj{i}" for i in range(size)]
        if isinstance(objectives, str) or not all(isinstance(o, str) and o for o in objectives):
            raise ConfigError(f"objectives: expected a list of non-empty names, got {objectives!r}")
        if len(objectives) != size:
            raise ConfigError(f"objectives: env {name} has a reward space of size {size}, got {len(objectives)} names")
        if len(set(objectives)) != len(objectives):
            raise ConfigError(f"objectives: a name is given twice in {list(objectives)}")
        # partial binds each index now (a lambda over the loop variable would read the last one).
        super().__init__(env, {o: partial(_objective, i, size, name) for i, o in enumerate(objectives)})
        self.name = name
        self.objectives: tuple[str, ...] = tuple(objectives)
        self._utility: Callable[[np.ndarray], Any] = np.sum
        if callable(utility):
            self._utility = utility
        elif utility is not None:
            try:
                weights = np.asarray(utility, dtype=np.float64)
            except (TypeError, ValueError):
                raise ConfigError(f"utility: expected weights or a callable, got {utility!r}") from None
            if weights.shape != (size,) or not np.all(np.isfinite(weights)):
                raise ConfigError(
                    f"utility: expected {size} finite weights (one per objective of env {name}), got {utility!r}"
                )
            self._utility = partial(np.dot, weights)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = super().step(action)  # the factors, its shape checked
        value = self._utility(np.array(reward, dtype=np.float64).reshape(-1))  # a copy: the env's untouched
        try:
            scalar = float(value)
        except (TypeError, ValueError):
            raise FactorError(f"utility of env {self.name} returned {value!r}, not a number") from None
        return obs, scalar, terminated, truncated, info


def _objective(i: int, size: int, where: str, obs: Any, action: Any, next_obs: Any, reward: Any, info: Any) -> float:
    """Component ``i`` of a vector reward of ``size`` components: the :data:`FactorFn` of objective ``i``."""
    vector = np.asarray(reward, dtype=np.float64).reshape(-1)
    if vector.shape != (size,):
        raise FactorError(
            f"env {where} returned a reward of shape {np.asarray(reward).shape}, not one value per objective ({size})"
        )
    return float(vector[i])


def objectives_of(env: gym.Env) -> tuple[str, ...]:
    """The objective names of an env made by :func:`factorize` from a vector-reward env (else empty)."""
    while True:
        if isinstance(env, ObjectiveFactors):
            return env.objectives
        if not isinstance(env, gym.Wrapper):
            return ()
        env = env.env


def factorize(
    env_or_id: gym.Env | str,
    objectives: Sequence[str] | None = None,
    utility: Utility | None = None,
    **make_kwargs: Any,
) -> gym.Wrapper:
    """Make an env a factorized env: from the ``reward_*`` components of its info, or from its vector reward.

    Works with Gymnasium's MuJoCo envs as they are (``Walker2d-v5`` reports factors ``forward``,
    ``survive`` and ``ctrl``; ``reward_ctrl`` is negative, so the factors sum to the env reward)
    and with your own envs that follow the same convention. Rank the factors with the sign they
    are reported with: ``Factor("ctrl", "max")`` prefers a smaller control cost.

    A multi-objective env (MO-Gymnasium's, or any env with a vector ``reward_space``; an id
    ``mo-gymnasium:<id>`` is made with ``mo_gymnasium.make``) gets one factor per objective and a
    scalar reward, its utility (see :class:`ObjectiveFactors`).

    :param env_or_id: a ``gymnasium.Env``, a Gymnasium env id or ``mo-gymnasium:<id>``.
    :param objectives: names of a vector reward's components, in order (default ``obj0``, ...).
    :param utility: a vector reward's scalar: weights, or ``fn(vector) -> float`` (default: the sum).
    :param make_kwargs: passed to ``gymnasium.make`` (or ``mo_gymnasium.make``) when ``env_or_id`` is an id.
    :returns: the env wrapped in :class:`RewardInfoFactors`, or :class:`ObjectiveFactors` for a vector reward.
    :raises ConfigError: for an unknown id, kwargs given with an env, a missing dependency, or
        objectives that do not fit the reward space.
    """
    if isinstance(env_or_id, str):
        if env_or_id.startswith(MO_PREFIX):  # make_env wraps it in ObjectiveFactors
            env = make_env(env_or_id, objectives=objectives, utility=utility, **make_kwargs)
            assert isinstance(env, ObjectiveFactors)
            return env
        env = make_env(env_or_id, **make_kwargs)
    elif make_kwargs:
        raise ConfigError(f"factorize: make kwargs ({', '.join(make_kwargs)}) only apply to an env id")
    elif not isinstance(env_or_id, gym.Env):
        raise ConfigError(f"factorize: expected a gymnasium.Env or an env id, got {type(env_or_id).__name__}")
    else:
        env = env_or_id
    name = env_or_id if isinstance(env_or_id, str) else None
    if reward_space(env) is not None:
        return ObjectiveFactors(env, objectives, utility, name)
    if objectives is not None or utility is not None:
        raise ConfigError(f"objectives, utility: env {name or env_name(env)} has a scalar reward (no reward_space)")
    return RewardInfoFactors(env, name)


def _as_float(value: Any) -> float:
    """A factor as a float; an integer too large for one is infinite (counted, never a crash)."""
    try:
        return float(value)
    except OverflowError:
        return math.copysign(math.inf, value)


def read_factors(info: Mapping[str, Any], names: list[str], where: str = "env") -> list[float]:
    """The named factors of one step's info, in order; a clear error when any is missing."""
    reported = info.get("factors")
    if not isinstance(reported, Mapping):
        raise FactorError(f"{where} reports no info['factors']: wrap it with heron.FactorWrapper")
    try:
        return [_as_float(reported[name]) for name in names]
    except KeyError as err:
        raise FactorError(
            f"{where} did not report factor {err.args[0]!r} at this step (reported: {sorted(reported)})"
        ) from None
    except (TypeError, ValueError):
        raise FactorError(f"{where} reported a factor that is not a number: {dict(reported)!r}") from None


def probe_factor_names(env: gym.Env, seed: int = 0, where: str = "env") -> list[str]:
    """Reset the env and take one random step to learn which factors it reports."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    _, reward, *_, info = env.step(env.action_space.sample())
    shape = np.shape(np.asarray(reward))
    if shape != ():
        raise ConfigError(
            f"{where} returns a step reward of shape {shape}: heron needs a scalar env reward"
            " (wrap a vector-reward env so that info['factors'] names each component and the reward is one number)"
        )
    reported = info.get("factors")
    if not isinstance(reported, Mapping) or not reported:
        raise FactorError(f"{where} reports no info['factors']: wrap it with heron.FactorWrapper")
    return list(reported)
