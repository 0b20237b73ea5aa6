"""Pairs of behaviours and their labels: the recent-experience pool, units, teachers, noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch

from heron.errors import ConfigError
from heron.hierarchy import Comparison, Hierarchy

UnitKind = Literal["transition", "segment", "episode"]
Aggregate = Literal["sum", "mean", "min", "max", "last"]


class ExperiencePool:
    """A ring buffer of the most recent steps of every env, time-major: shape (capacity, n_envs, ...).

    :param capacity: steps kept per env.
    :param n_envs: parallel environments.
    :param widths: width of each stored field, e.g. ``{"obs": 3, "action": 1, "factors": 3}``.
    """

    def __init__(self, capacity: int, n_envs: int, widths: dict[str, int]) -> None:
        self.capacity = capacity
        self.n_envs = n_envs
        self.fields = {k: np.zeros((capacity, n_envs, w), dtype=np.float32) for k, w in widths.items()}
        self.dones = np.zeros((capacity, n_envs), dtype=bool)
        self.starts = np.zeros((capacity, n_envs), dtype=bool)
        self.count = 0
        self._next_is_start = np.ones(n_envs, dtype=bool)

    def add(self, dones: np.ndarray, **values: np.ndarray) -> None:
        """Append one vector step: each field has shape (n_envs, width)."""
        self.extend(np.asarray(dones)[None], **{k: np.asarray(v)[None] for k, v in values.items()})

    def extend(self, dones: np.ndarray, **values: np.ndarray) -> None:
        """Append consecutive vector steps at once: dones (T, n_envs), each field (T, n_envs, width)."""
        dones = np.asarray(dones, dtype=bool).reshape(-1, self.n_envs)
        steps = len(dones)
        if steps == 0:
            return
        keep = min(steps, self.capacity)  # older steps would be overwritten within this call
        t = (self.count + steps - keep + np.arange(keep)) % self.capacity
        for name, array in self.fields.items():
            array[t] = np.asarray(values[name]).reshape(steps, self.n_envs, -1)[steps - keep :]
        starts = np.concatenate([self._next_is_start[None], dones[:-1]])
        self.dones[t] = dones[steps - keep :]
        self.starts[t] = starts[steps - keep :]
        self._next_is_start = dones[-1].copy()
        self.count += steps

    def state_dict(self) -> dict[str, Any]:
        """The pool's contents as tensors and plain data."""
        return {
            "fields": {k: torch.from_numpy(v.copy()) for k, v in self.fields.items()},
            "dones": torch.from_numpy(self.dones.copy()),
            "starts": torch.from_numpy(self.starts.copy()),
            "next_is_start": torch.from_numpy(self._next_is_start.copy()),
            "count": self.count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a :class:`ConfigError` when its shapes are not this pool's."""
        fields = state["fields"]
        if set(fields) != set(self.fields):
            raise ConfigError(f"pool: the saved fields {sorted(fields)} are not {sorted(self.fields)}")
        for name, array in self.fields.items():
            if tuple(fields[name].shape) != array.shape:
                raise ConfigError(f"pool: saved {name} has shape {tuple(fields[name].shape)}, expected {array.shape}")
            array[:] = fields[name].numpy()
        self.dones[:] = state["dones"].numpy().reshape(self.dones.shape)
        self.starts[:] = state["starts"].numpy().reshape(self.starts.shape)
        self._next_is_start[:] = state["next_is_start"].numpy().reshape(self.n_envs)
        count = int(state["count"])
        if count < 0:
            raise ConfigError(f"pool: saved step count {count} is negative")
        self.count = count

    @property
    def size(self) -> int:
        """Steps held per env."""
        return min(self.count, self.capacity)

    def chronological(self) -> np.ndarray:
        """Physical time indices of the held steps, oldest first."""
        return (np.arange(self.count - self.size, self.count)) % self.capacity

    def recent_rows(self, steps: int) -> np.ndarray:
        """Flat row indices (t * n_envs + e) of the last ``steps`` vector steps, time-major."""
        times = self.chronological()
        times = times[max(len(times) - steps, 0) :]
        return (times[:, None] * self.n_envs + np.arange(self.n_envs)).reshape(-1)

    def flat(self, name: str) -> np.ndarray:
        """A field as (capacity * n_envs, width) rows."""
        return self.fields[name].reshape(self.capacity * self.n_envs, -1)

    def units(self, kind: UnitKind, segment_length: int = 25) -> np.ndarray:
        """Row indices of each unit, shape (U, L), padded with -1."""
        times = self.chronological()
        n_envs = self.n_envs
        if kind == "transition":
            return (times[:, None] * n_envs + np.arange(n_envs)).reshape(-1, 1)
        dones = self.dones[times]  # (T, E), oldest first
        if kind == "segment":
            length = segment_length
            if len(times) < length:
                return np.zeros((0, length), dtype=np.int64)
            # A window may end with a done but must not contain one earlier.
            csum = np.concatenate([np.zeros((1, n_envs), dtype=np.int64), np.cumsum(dones, axis=0)])
            n_windows = len(times) - length + 1
            inner = csum[length - 1 : length - 1 + n_windows] - csum[:n_windows]
            start, env = np.nonzero(inner == 0)
            steps = times[start[:, None] + np.arange(length)]
            return steps * n_envs + env[:, None]
        starts = self.starts[times]
        first: list[np.ndarray] = []
        last: list[np.ndarray] = []
        owner: list[np.ndarray] = []
        for e in range(n_envs):
            s_idx = np.flatnonzero(starts[:, e])
            d_idx = np.flatnonzero(dones[:, e])
            if len(s_idx) == 0 or len(d_idx) == 0:
                continue
            # Each done closes the episode opened by the latest start at or before it.
            opener = np.searchsorted(s_idx, d_idx, side="right") - 1
            ok = opener >= 0
            # Episodes already open when the pool's window begins are incomplete.
            first.append(s_idx[opener[ok]])
            last.append(d_idx[ok])
            owner.append(np.full(int(ok.sum()), e))
        f = np.concatenate(first) if first else np.zeros(0, dtype=np.int64)
        if len(f) == 0:
            return np.zeros((0, 1), dtype=np.int64)
        la, en = np.concatenate(last), np.concatenate(owner)
        length = int((la - f).max()) + 1
        offsets = f[:, None] + np.arange(length)
        valid = offsets <= la[:, None]
        steps = times[np.minimum(offsets, len(times) - 1)]
        return np.where(valid, steps * n_envs + en[:, None], -1)


def aggregate(values: np.ndarray, index: np.ndarray, how: Aggregate) -> np.ndarray:
    """Per-unit aggregate of step values (R, K) over the unit index (U, L) padded with -1."""
    mask = (index >= 0)[..., None]
    gathered = values[np.maximum(index, 0)]
    if how == "sum":
        return np.where(mask, gathered, 0).sum(axis=1)
    if how == "mean":
        return np.where(mask, gathered, 0).sum(axis=1) / mask.sum(axis=1)
    if how == "min":
        return np.where(mask, gathered, np.inf).min(axis=1)
    if how == "max":
        return np.where(mask, gathered, -np.inf).max(axis=1)
    last = mask[..., 0].sum(axis=1) - 1
    return gathered[np.arange(len(index)), last]


class Teacher(Protocol):
    """Labels pairs of aggregated factor vectors."""

    def label(self, za: np.ndarray, zb: np.ndarray, scale: np.ndarray) -> Comparison: ...


@dataclass(frozen=True)
class HierarchyTeacher:
    """HERON's teacher: the decision tree of a ranking."""

    hierarchy: Hierarchy

    def label(self, za: np.ndarray, zb: np.ndarray, scale: np.ndarray) -> Comparison:
        return self.hierarchy.compare_detailed(za, zb, scale)


@dataclass(frozen=True)
class WeightedSumTeacher:
    """Classic synthetic RLHF: prefer the unit with the larger weighted factor sum (ties unlabeled).

    :param weights: signed weight per factor, in the factor matrix's column order.
    """

    weights: np.ndarray

    def label(self, za: np.ndarray, zb: np.ndarray, scale: np.ndarray) -> Comparison:
        gap = (za - zb) @ self.weights
        finite = np.isfinite(gap)
        labels = np.where(finite, np.sign(gap), 0).astype(np.int8)
        return Comparison(labels, np.where(labels != 0, 0, -1), ~finite)


def sample_pairs(n_units: int, n_pairs: int, rng: np.random.Generator, group: int = 0, block: int = 256) -> np.ndarray:
    """Random pairs of distinct unit indices, shape (P, 2) (empty when fewer than two units).

    :param group: when > 1, each consecutive block of ``block`` pairs is drawn among ``group``
        distinct units picked at random for that block, so one minibatch scores ``group`` units for
        ``block`` comparisons; otherwise pairs are independent.
    :param block: pairs per block (the reward model's minibatch size).
    """
    if n_units < 2:
        return np.zeros((0, 2), dtype=np.int64)
    if group <= 1 or group >= n_units:
        first = rng.integers(0, n_units, n_pairs)
        second = (first + rng.integers(1, n_units, n_pairs)) % n_units
        return np.stack([first, second], axis=1)
    n_blocks = -(-n_pairs // block)
    members = np.argpartition(rng.random((n_blocks, n_units)), group - 1, axis=1)[:, :group]
    first = rng.integers(0, group, (n_blocks, block))
    second = (first + rng.integers(1, group, (n_blocks, block))) % group
    rows = np.arange(n_blocks)[:, None]
    pairs = np.stack([members[rows, first], members[rows, second]], axis=-1)
    return pairs.reshape(-1, 2)[:n_pairs]


def sample_step_pairs(n_steps: int, n_envs: int, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Random pairs of distinct envs at one vector step, shape (P, 2), as transition unit indices
    ``step * n_envs + env`` (empty when there is no step or fewer than two envs)."""
    if n_steps < 1 or n_envs < 2:
        return np.zeros((0, 2), dtype=np.int64)
    step = rng.integers(0, n_steps, n_pairs) * n_envs
    first = rng.integers(0, n_envs, n_pairs)
    second = (first + rng.integers(1, n_envs, n_pairs)) % n_envs
    return np.stack([step + first, step + second], axis=1)


def flip(labels: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    """Teacher noise: each label flipped with the given probability."""
    if probability <= 0:
        return labels
    return np.where(rng.random(len(labels)) < probability, -labels, labels).astype(labels.dtype)
