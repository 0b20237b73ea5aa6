"""VecEnvs heron puts between SB3 and the env: the reward swap, and the slot VecEnv.

:class:`RewardSwap` decides what reward the agent sees (the env's, a weighted sum of the factors,
or the learned reward written into the agent's buffer later) and keeps each step's factors.

One shared policy for an env made of slots (intersections, agents, ...): each slot is a VecEnv index.

An env with slots has an int attribute ``num_slots`` (n), observations with a leading axis of n
rows, an action space with one entry per slot (``MultiDiscrete`` of n equal sizes, or a ``Box``
whose first axis is n), and, besides the env-wide ``info["factors"]``, per-slot
``info["slot_rewards"]`` (n floats) and ``info["slot_factors"]`` (n dicts). :class:`SlotVecEnv`
presents such an env to Stable-Baselines3 as n environments that step together, so one policy
acts for every slot and heron compares the behaviour of each slot on its own.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from heron.errors import ConfigError
from heron.factors import read_factors


class RewardSwap(VecEnvWrapper):
    """Reads each step's factors and decides what reward the agent sees.

    ``mode="env"``: the env's own reward; ``"weights"``: a fixed weighted sum of the factors;
    ``"deferred"``: 0 now, the learned reward is written into the agent's buffer later (one batched
    reward-model call per rollout instead of one per step). The env's reward stays in
    ``info["env_reward"]`` and in the Monitor's episode statistics; :attr:`factors` holds the last
    step's factors, (n_envs, K) in the ranking's order.

    A step whose factors are not all finite in float32 (NaN, infinity, a value past float32's
    range), or whose reward is not (the env's, or the weighted sum), is counted in
    :attr:`nonfinite_steps` and gives the agent a reward of 0 instead of crashing its update; the
    learned reward keeps such steps out of labels, inputs and statistics (:class:`heron.HeronLoop`).

    :param venv: the VecEnv to wrap.
    :param factor_names: the factors to read from each step's ``info["factors"]``, in order.
    :param mode: ``env``, ``weights`` or ``deferred``.
    :param weights: signed weights per factor (``weights`` mode).
    """

    def __init__(self, venv: VecEnv, factor_names: list[str], mode: str, weights: np.ndarray | None = None):
        super().__init__(venv)
        self.factor_names = factor_names
        self.mode = mode
        self.weights = weights
        self.factors = np.zeros((venv.num_envs, len(factor_names)), dtype=np.float32)
        self.nonfinite_steps = 0

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        with np.errstate(over="ignore", invalid="ignore"):  # a value past float32 becomes inf: counted below
            self.factors = np.array([read_factors(info, self.factor_names) for info in infos], dtype=np.float32)
        for info, r in zip(infos, rewards, strict=True):
            info["env_reward"] = float(r)
        finite = np.isfinite(self.factors).all(axis=1)
        if self.mode == "weights":
            assert self.weights is not None
            with np.errstate(over="ignore", invalid="ignore"):
                weighted = np.nan_to_num(self.factors, nan=0.0, posinf=0.0, neginf=0.0) @ self.weights
            finite &= np.isfinite(weighted)
            rewards = np.where(finite, weighted, 0.0).astype(np.float32)
        elif self.mode == "deferred":
            rewards = np.zeros_like(rewards)
        else:
            env_finite = np.isfinite(np.asarray(rewards, dtype=np.float32))
            finite &= env_finite
            rewards = np.where(env_finite, rewards, 0.0).astype(np.float32)
        self.nonfinite_steps += int((~finite).sum())
        return obs, rewards, dones, infos


def slot_count(env: gym.Env) -> int | None:
    """The env's ``num_slots`` (looked up through its wrappers), or None when it has none."""
    try:
        n = env.get_wrapper_attr("num_slots")
    except AttributeError:
        return None
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _slot_spaces(env: gym.Env, n: int) -> tuple[spaces.Box, spaces.Space]:
    obs, act = env.observation_space, env.action_space
    if not isinstance(obs, spaces.Box) or obs.shape[:1] != (n,):
        raise ConfigError(f"slots: the observation space must be a Box with {n} rows (one per slot), got {obs}")
    slot_obs = spaces.Box(obs.low.min(axis=0), obs.high.max(axis=0), dtype=obs.dtype)
    if isinstance(act, spaces.MultiDiscrete) and act.shape == (n,):
        sizes, starts = np.unique(act.nvec), np.unique(act.start)
        if len(sizes) == len(starts) == 1:
            return slot_obs, spaces.Discrete(int(sizes[0]), start=int(starts[0]))
    if isinstance(act, spaces.Box) and act.shape[:1] == (n,):
        return slot_obs, spaces.Box(act.low.min(axis=0), act.high.max(axis=0), dtype=act.dtype)
    raise ConfigError(
        f"slots: the action space must be a MultiDiscrete of {n} equal sizes or a Box with {n} rows, got {act}"
    )


class SlotVecEnv(VecEnv):
    """Each slot of an env with ``num_slots`` slots as one index of an SB3 VecEnv.

    ``obs[i]`` is row i of the env's observation; a step takes one action per slot and passes
    them to the env together; ``rewards[i]`` is ``info["slot_rewards"][i]`` and
    ``infos[i]["factors"]`` is ``info["slot_factors"][i]`` (the env's other info entries are
    copied to every slot). When the env's episode ends every slot is done: each slot's info gets
    its ``terminal_observation`` row, ``TimeLimit.truncated`` and Monitor's ``episode`` statistics
    (``r``: the slot's return, ``l``: steps, ``t``: seconds since this VecEnv was made), and the
    env is reset. The spaces SB3 sees are one slot's: a ``Box`` row and a ``Discrete`` (or ``Box``
    row) action.

    :param env: the env with slots; this VecEnv owns it and closes it.
    :raises ConfigError: when the env has no ``num_slots`` or spaces that do not split into slots.
    """

    def __init__(self, env: gym.Env) -> None:
        n = slot_count(env)
        if n is None or n < 1:
            raise ConfigError(f"slots: env {type(env.unwrapped).__name__} has no positive int attribute num_slots")
        self.env = env
        super().__init__(n, *_slot_spaces(env, n))
        self._actions = np.zeros(0)
        self._returns = np.zeros(n)
        self._length = 0
        self._started = time.time()

    def reset(self) -> np.ndarray:
        obs, info = self.env.reset(seed=self._seeds[0], options=self._options[0] or None)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [dict(info) for _ in range(self.num_envs)]
        self._returns[:] = 0.0
        self._length = 0
        return np.asarray(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, _, terminated, truncated, info = self.env.step(self._actions)
        obs = np.asarray(obs)
        rewards = np.asarray(info["slot_rewards"], dtype=np.float32)
        shared = {k: v for k, v in info.items() if k not in ("factors", "slot_factors", "slot_rewards")}
        infos: list[dict[str, Any]] = [{**shared, "factors": f} for f in info["slot_factors"]]
        self._returns += rewards
        self._length += 1
        done = bool(terminated or truncated)
        if done:
            elapsed = round(time.time() - self._started, 6)
            for i, slot in enumerate(infos):
                slot["terminal_observation"] = obs[i]
                slot["TimeLimit.truncated"] = bool(truncated and not terminated)
                slot["episode"] = {"r": float(self._returns[i]), "l": self._length, "t": elapsed}
            obs = self.reset()
        return obs, rewards, np.full(self.num_envs, done), infos

    def close(self) -> None:
        self.env.close()

    def _count(self, indices: VecEnvIndices) -> int:
        return len(list(self._get_indices(indices)))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The env's attribute, once per index (all slots share the env)."""
        return [self.env.get_wrapper_attr(attr_name)] * self._count(indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set the env's attribute (once: all slots share the env)."""
        self.env.set_wrapper_attr(attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Call the env's method once and give its result to every index."""
        result = self.env.get_wrapper_attr(method_name)(*method_args, **method_kwargs)
        return [result] * self._count(indices)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [is_wrapped(self.env, wrapper_class)] * self._count(indices)
