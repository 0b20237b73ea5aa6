"""Small factorized environments for the tests."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# factors (primary, secondary) per context and action. Lexicographic optimum: context 0 -> action 0,
# context 1 -> action 1. Equal weights prefer action 2 in both contexts.
BANDIT_FACTORS = np.array(
    [
        [[1.0, 0.0], [0.0, 0.5], [0.8, 3.0]],
        [[0.0, 0.5], [1.0, 0.0], [0.8, 3.0]],
    ]
)
LEX_OPTIMUM = (0, 1)


class ContextualBandit(gym.Env):
    """One-step episodes: observe a one-hot context, pick one of three actions."""

    observation_space = spaces.Box(0.0, 1.0, (2,), dtype=np.float32)
    action_space = spaces.Discrete(3)

    def __init__(self) -> None:
        self.context = 0

    def _obs(self) -> np.ndarray:
        return np.eye(2, dtype=np.float32)[self.context]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.context = int(self.np_random.integers(2))
        return self._obs(), {}

    def step(self, action: Any) -> Any:
        primary, secondary = BANDIT_FACTORS[self.context, int(action)]
        info = {"factors": {"primary": float(primary), "secondary": float(secondary)}}
        return self._obs(), float(primary), True, False, info


class DropsFactor(gym.Wrapper):
    """Stops reporting one factor after a number of steps."""

    def __init__(self, env: gym.Env, factor: str, after: int) -> None:
        super().__init__(env)
        self.factor, self.after, self.steps = factor, after, 0

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps > self.after:
            info = dict(info)
            info["factors"] = {k: v for k, v in info["factors"].items() if k != self.factor}
        return obs, reward, terminated, truncated, info


gym.register("heron_test/ContextualBandit-v0", entry_point=ContextualBandit)
gym.register(
    "heron_test/PendulumDropsTorque-v0",
    entry_point=lambda: DropsFactor(gym.make("heron/Pendulum-v1"), "torque", after=300),
)


CRASH_AFTER: int | None = None  # tests set it: each env instance raises once it has taken this many steps


class CrashesAfter(gym.Wrapper):
    """Raises RuntimeError (a simulated kill) once this instance has stepped ``CRASH_AFTER`` times."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.steps = 0

    def step(self, action: Any) -> Any:
        self.steps += 1
        if CRASH_AFTER is not None and self.steps > CRASH_AFTER:
            raise RuntimeError("simulated crash")
        return self.env.step(action)


gym.register("heron_test/PendulumCrashes-v0", entry_point=lambda: CrashesAfter(gym.make("heron/Pendulum-v1")))


class NonFiniteFactors(gym.Wrapper):
    """Every ``every``-th step reports one factor as NaN, +inf or a value past float32's range (in turn)."""

    BAD = (float("nan"), float("inf"), 1e39)

    def __init__(self, env: gym.Env, factor: str, every: int = 7) -> None:
        super().__init__(env)
        self.factor, self.every, self.steps = factor, every, 0

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps % self.every == 0:
            info = dict(info)
            bad = self.BAD[(self.steps // self.every) % len(self.BAD)]
            info["factors"] = {**info["factors"], self.factor: bad}
        return obs, reward, terminated, truncated, info


gym.register(
    "heron_test/PendulumNonFinite-v0",
    entry_point=lambda: NonFiniteFactors(gym.make("heron/Pendulum-v1"), "angle"),
)
