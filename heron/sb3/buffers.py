"""Between SB3's buffers and the HeronLoop: what each step recorded, and the learned reward written back.

On-policy (PPO, A2C): the rollout buffer already keeps observations and actions, so only factors,
dones and terminal observations are staged per step; the whole rollout goes to the loop at its
end, its rewards are computed in one batch and returns and advantages recomputed. Off-policy (SAC,
TD3, DDPG, DQN): each step goes to the loop as it happens; at each rollout end the newest replay
rows get the learned reward, and after a refit every row does (relabeling).

For a Dict observation space SB3 keeps observations as a dict of arrays (``DictRolloutBuffer``,
``DictReplayBuffer``); they are read back key by key, still one array operation per key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm

from heron.loop import HeronLoop


def _terminals(local: dict[str, Any]) -> list[tuple[int, np.ndarray]]:
    """(env, last observation) of the episodes that ended this step and were reset by the VecEnv."""
    infos = local["infos"]
    found = ((int(i), infos[i].get("terminal_observation")) for i in np.flatnonzero(local["dones"]))
    return [(i, terminal) for i, terminal in found if terminal is not None]


def _shaped(space: spaces.Space, x: Any, lead: tuple[int, ...]) -> Any:
    """Buffer contents as values of the space with leading axes ``lead`` (SB3 stores a Discrete as
    (..., 1)); for a Dict space, a dict of such arrays."""
    if isinstance(space, spaces.Dict):
        return {k: _shaped(sub, x[k], lead) for k, sub in space.spaces.items()}
    return np.asarray(x).reshape(*lead, *(space.shape or ()))


def _per_key(fn: Callable[..., np.ndarray], first: Any, *rest: Any) -> Any:
    """``fn`` of arrays, or of each key's arrays when the observations are dicts (a Dict space)."""
    if isinstance(first, Mapping):
        return {k: fn(first[k], *(r[k] for r in rest)) for k in first}
    return fn(first, *rest)


def _put(target: Any, where: tuple[int, ...], value: Any) -> None:
    """``target[where] = value`` for an observation array, or key by key for a dict of them."""
    if isinstance(target, Mapping):
        for k in target:
            target[k][where] = value[k]
    else:
        target[where] = value


class OnPolicyAdapter:
    """Records PPO/A2C rollouts into the loop and gives the rollout buffer the learned reward."""

    def __init__(self, model: BaseAlgorithm, loop: HeronLoop) -> None:
        self.model, self.loop = model, loop
        self.buffer: Any = model.rollout_buffer  # type: ignore[attr-defined]
        steps, n_envs = self.buffer.buffer_size, self.buffer.n_envs
        self.factors = np.zeros((steps, n_envs, len(loop.hierarchy)), dtype=np.float32)
        self.dones = np.zeros((steps, n_envs), dtype=bool)
        self.terminals: dict[tuple[int, int], np.ndarray] = {}
        self.staged = 0

    @property
    def pending(self) -> bool:
        return self.staged > 0

    def on_step(self, local: dict[str, Any], factors: np.ndarray) -> None:
        # SB3 calls on_step after env.step and before rollout_buffer.add: ``pos`` is this step's row.
        t = self.buffer.pos
        self.factors[t] = factors
        self.dones[t] = local["dones"]
        if "next_obs" in self.loop.pool.fields:
            for i, terminal in _terminals(local):
                self.terminals[(t, i)] = terminal
        self.staged += 1

    def on_rollout_end(self, local: dict[str, Any]) -> None:
        """Hand the finished rollout to the loop (SB3 has filled the buffer and computed advantages)."""
        buffer, space = self.buffer, self.model.action_space
        lead = (buffer.buffer_size, buffer.n_envs)
        actions = buffer.actions
        if isinstance(space, spaces.Box):  # what the env was given, as SB3 computes it
            if self.model.policy.squash_output:
                actions = self.model.policy.unscale_action(actions)
            else:
                actions = np.clip(actions, space.low, space.high)
        next_obs = None
        if "next_obs" in self.loop.pool.fields:
            next_obs = _per_key(
                lambda seen, new: np.concatenate([seen[1:], np.reshape(new, (1, *seen.shape[1:]))]).astype(np.float32),
                buffer.observations,
                local["new_obs"],
            )
            for (t, i), terminal in self.terminals.items():
                _put(next_obs, (t, i), terminal)
            next_obs = _shaped(self.model.observation_space, next_obs, lead)
        self.loop.observe(
            obs=_shaped(self.model.observation_space, buffer.observations, lead),
            action=_shaped(space, actions, lead),
            next_obs=next_obs,
            factors=self.factors,
            dones=self.dones,
        )
        self.terminals.clear()

    def deliver(self, local: dict[str, Any], refitted: bool) -> None:
        """Add the learned reward to the rollout (which holds only SB3's timeout bootstrap so far)."""
        # on_rollout_end runs after SB3's compute_returns_and_advantage: compute them again.
        self.buffer.rewards += self.loop.recent_rewards(self.buffer.buffer_size)
        self.buffer.compute_returns_and_advantage(last_values=local["values"], dones=local["dones"])
        self.staged = 0


class OffPolicyAdapter:
    """Records SAC/TD3/DDPG/DQN steps into the loop and relabels the replay buffer."""

    def __init__(self, model: BaseAlgorithm, loop: HeronLoop) -> None:
        self.model, self.loop = model, loop
        self.buffer: Any = model.replay_buffer  # type: ignore[attr-defined]
        self.since_relabel = 0
        # The replay buffer does not keep factors: when the reward model reads them, keep them beside it.
        self.replay_factors: np.ndarray | None = None
        if "factors" in loop.encoding.inputs:
            shape = (self.buffer.buffer_size, self.buffer.n_envs, len(loop.hierarchy))
            self.replay_factors = np.zeros(shape, dtype=np.float32)

    @property
    def pending(self) -> bool:
        return self.since_relabel > 0

    def on_step(self, local: dict[str, Any], factors: np.ndarray) -> None:
        # SB3 calls on_step before _store_transition: ``_last_obs`` is still this step's observation
        # and the step is not in the replay buffer yet.
        next_obs = None
        if "next_obs" in self.loop.pool.fields:
            next_obs = _per_key(lambda new: np.array(new, dtype=np.float32, copy=True), local["new_obs"])
            for i, terminal in _terminals(local):
                _put(next_obs, (i,), terminal)
        n = self.buffer.n_envs
        self.loop.observe(
            obs=_shaped(self.model.observation_space, self.model._last_obs, (1, n)),
            action=_shaped(self.model.action_space, local["actions"], (1, n)),
            next_obs=None if next_obs is None else _shaped(self.model.observation_space, next_obs, (1, n)),
            factors=factors[None],
            dones=np.asarray(local["dones"])[None],
        )
        self.since_relabel += 1

    def on_rollout_end(self, local: dict[str, Any]) -> None:
        """Nothing to hand over: every step went to the loop as it happened."""

    def deliver(self, local: dict[str, Any], refitted: bool) -> None:
        """Write learned rewards for the newest replay rows, or for every row after a refit."""
        buffer, steps = self.buffer, self.since_relabel
        self.since_relabel = 0
        positions = (buffer.pos - steps + np.arange(steps)) % buffer.buffer_size
        if self.replay_factors is not None:
            self.replay_factors[positions] = self.loop.pool.fields["factors"][self.loop.pool.chronological()[-steps:]]
        if not refitted:
            buffer.rewards[positions] = self.loop.recent_rewards(steps)
            return
        upto = buffer.buffer_size if buffer.full else buffer.pos
        lead = (upto, buffer.n_envs)
        actions = buffer.actions[:upto]
        if isinstance(self.model.action_space, spaces.Box):  # the buffer keeps actions scaled to [-1, 1]
            actions = self.model.policy.unscale_action(actions.reshape(upto * buffer.n_envs, -1))
        obs_space = self.model.observation_space
        if buffer.optimize_memory_usage:  # never for a Dict space (SB3 does not support it there)
            next_obs = buffer.observations[(np.arange(upto) + 1) % buffer.buffer_size]
        else:
            next_obs = _per_key(lambda seen: seen[:upto], buffer.next_observations)
        buffer.rewards[:upto] = self.loop.reward(
            obs=_shaped(obs_space, _per_key(lambda seen: seen[:upto], buffer.observations), lead),
            action=_shaped(self.model.action_space, actions, lead),
            next_obs=_shaped(obs_space, next_obs, lead) if "next_obs" in self.loop.encoding.inputs else None,
            factors=None if self.replay_factors is None else self.replay_factors[:upto],
        )
