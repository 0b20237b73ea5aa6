"""Factorized classic-control tasks: Pendulum and MountainCarContinuous."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from heron.factors import FactorWrapper


def _angle(obs: np.ndarray, *_: Any) -> float:
    return math.atan2(float(obs[1]), float(obs[0])) ** 2


def _angular_velocity(obs: np.ndarray, *_: Any) -> float:
    return float(obs[2]) ** 2


def _torque(obs: np.ndarray, action: np.ndarray, *_: Any) -> float:
    return float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -2.0, 2.0)) ** 2


def make_pendulum(**kwargs: Any) -> gym.Env:
    """Pendulum-v1 with factors ``angle`` (theta^2), ``angular_velocity`` (theta_dot^2), ``torque`` (u^2).

    The env reward stays ``-(angle + 0.1 angular_velocity + 0.001 torque)``.
    """
    return FactorWrapper(
        gym.make("Pendulum-v1", **kwargs),
        {"angle": _angle, "angular_velocity": _angular_velocity, "torque": _torque},
    )


def _goal(obs: Any, action: Any, next_obs: np.ndarray, reward: Any, info: dict[str, Any]) -> float:
    return float(next_obs[0] >= 0.45 and next_obs[1] >= 0.0)


def _energy(obs: Any, action: np.ndarray, *_: Any) -> float:
    return float(np.asarray(action, dtype=np.float64).reshape(-1)[0]) ** 2


def make_mountain_car(**kwargs: Any) -> gym.Env:
    """MountainCarContinuous-v0 with factors ``goal`` (1 when the goal is reached) and ``energy`` (a^2).

    The env reward stays ``100 goal - 0.1 energy``.
    """
    return FactorWrapper(gym.make("MountainCarContinuous-v0", **kwargs), {"goal": _goal, "energy": _energy})
