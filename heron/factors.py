"""What a factor is to an environment: a named float reported each step in ``info["factors"]``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from heron.envs import make_env
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


def factorize(env_or_id: gym.Env | str, **make_kwargs: Any) -> RewardInfoFactors:
    """Make any env that reports ``reward_*`` components in its info a factorized env.

    Works with Gymnasium's MuJoCo envs as they are (``Walker2d-v5`` reports factors ``forward``,
    ``survive`` and ``ctrl``; ``reward_ctrl`` is negative, so the factors sum to the env reward)
    and with your own envs that follow the same convention. Rank the factors with the sign they
    are reported with: ``Factor("ctrl", "max")`` prefers a smaller control cost.

    :param env_or_id: a ``gymnasium.Env`` or a Gymnasium env id.
    :param make_kwargs: passed to ``gymnasium.make`` when ``env_or_id`` is an id.
    :returns: the env wrapped in :class:`RewardInfoFactors`.
    :raises ConfigError: for an unknown id, kwargs given with an env, or a missing dependency.
    """
    if isinstance(env_or_id, str):
        return RewardInfoFactors(make_env(env_or_id, **make_kwargs), env_or_id)
    if make_kwargs:
        raise ConfigError(f"factorize: make kwargs ({', '.join(make_kwargs)}) only apply to an env id")
    if not isinstance(env_or_id, gym.Env):
        raise ConfigError(f"factorize: expected a gymnasium.Env or an env id, got {type(env_or_id).__name__}")
    return RewardInfoFactors(env_or_id)


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
