"""What a factor is to an environment: a named float reported each step in ``info["factors"]``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, SupportsFloat

import gymnasium as gym

from heron.errors import FactorError

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


def read_factors(info: Mapping[str, Any], names: list[str], where: str = "env") -> list[float]:
    """The named factors of one step's info, in order; a clear error when any is missing."""
    reported = info.get("factors")
    if not isinstance(reported, Mapping):
        raise FactorError(f"{where} reports no info['factors']: wrap it with heron.FactorWrapper")
    try:
        return [float(reported[name]) for name in names]
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
    *_, info = env.step(env.action_space.sample())
    reported = info.get("factors")
    if not isinstance(reported, Mapping) or not reported:
        raise FactorError(f"{where} reports no info['factors']: wrap it with heron.FactorWrapper")
    return list(reported)
