"""Factorized Gymnasium v5 MuJoCo robots: Hopper, HalfCheetah and Ant (``pip install heron-rl[mujoco]``).

The factors are the reward components the MuJoCo env already reports in its info, renamed, with
costs made positive:

- ``progress`` = ``info["reward_forward"]`` (forward velocity times its weight), maximize;
- ``alive`` = ``info["reward_survive"]`` (the healthy reward), maximize;
- ``control_cost`` = ``-info["reward_ctrl"]``, minimize;
- ``contact_cost`` = ``-info["reward_contact"]``, minimize.

The env reward is unchanged and equals ``progress + alive - control_cost - contact_cost`` (over the
factors the robot has). This module imports MuJoCo only when an env is made.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from heron.factors import FactorFn, FactorWrapper

SOURCES: dict[str, tuple[str, float]] = {
    "progress": ("reward_forward", 1.0),
    "alive": ("reward_survive", 1.0),
    "control_cost": ("reward_ctrl", -1.0),
    "contact_cost": ("reward_contact", -1.0),
}
"""``{factor: (info key, sign)}``: each factor is ``sign * info[key]``."""


def _component(key: str, sign: float) -> FactorFn:
    def factor(obs: Any, action: Any, next_obs: Any, reward: Any, info: dict[str, Any]) -> float:
        return sign * float(info[key])

    return factor


def _robot(heron_id: str, kwargs: dict[str, Any]) -> gym.Env:
    from heron.envs import REGISTRY

    names = REGISTRY[heron_id].factors
    env = gym.make(heron_id.removeprefix("heron/"), **kwargs)
    return FactorWrapper(env, {name: _component(*SOURCES[name]) for name in names})


def make_hopper(**kwargs: Any) -> gym.Env:
    """Hopper-v5 with factors ``progress``, ``alive``, ``control_cost``; kwargs go to ``gym.make``."""
    return _robot("heron/Hopper-v5", kwargs)


def make_half_cheetah(**kwargs: Any) -> gym.Env:
    """HalfCheetah-v5 with factors ``progress``, ``control_cost``; kwargs go to ``gym.make``."""
    return _robot("heron/HalfCheetah-v5", kwargs)


def make_ant(**kwargs: Any) -> gym.Env:
    """Ant-v5 with factors ``progress``, ``alive``, ``control_cost``, ``contact_cost``; kwargs go to ``gym.make``."""
    return _robot("heron/Ant-v5", kwargs)
