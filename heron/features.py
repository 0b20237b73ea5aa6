"""What the reward model reads: raw observations, actions and factors turned into flat float rows.

An :class:`Encoding` is plain data (it round-trips through JSON), so a saved reward model carries
it and scores raw observations and actions with no other heron code. Pure numpy; Gymnasium spaces
are only read when an encoding is first built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from heron.errors import ConfigError

INPUTS = ("obs", "action", "next_obs", "factors")


@dataclass(frozen=True)
class Field:
    """How one input is encoded.

    :param kind: ``"box"`` (floats, flattened) or ``"discrete"`` (an integer, one-hot encoded).
    :param shape: the shape of one value (``box``); ``()`` for ``discrete``.
    :param n: the number of values (``discrete``).
    :param start: the smallest value (``discrete``).
    """

    kind: str
    shape: tuple[int, ...] = ()
    n: int = 0
    start: int = 0

    @property
    def width(self) -> int:
        """Columns of this input in a feature row."""
        return self.n if self.kind == "discrete" else int(np.prod(self.shape, dtype=np.int64))

    def encode(self, name: str, x: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        """Rows of shape (N, width) and the leading shape they came from (``x.shape`` minus one value's shape)."""
        x = np.asarray(x)
        if self.kind == "discrete":
            if x.dtype.kind not in "iub" and not (x.dtype.kind == "f" and np.all(np.mod(x, 1) == 0)):
                raise ConfigError(f"{name}: expected integers for a Discrete({self.n}) space, got dtype {x.dtype}")
            index = x.astype(np.int64).reshape(-1) - self.start
            if len(index) and (index.min() < 0 or index.max() >= self.n):
                raise ConfigError(f"{name}: values outside Discrete({self.n}, start={self.start})")
            rows = np.zeros((len(index), self.n), dtype=np.float32)
            rows[np.arange(len(index)), index] = 1.0
            return rows, x.shape
        k = len(self.shape)
        if x.shape[x.ndim - k :] != self.shape or x.ndim < k:
            raise ConfigError(f"{name}: expected values of shape {self.shape}, got an array of shape {x.shape}")
        lead = x.shape[: x.ndim - k]
        return x.astype(np.float32, copy=False).reshape(-1, self.width), lead

    def as_json(self) -> dict[str, Any]:
        if self.kind == "discrete":
            return {"kind": "discrete", "n": self.n, "start": self.start}
        return {"kind": "box", "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Field:
        if data.get("kind") == "discrete":
            return cls("discrete", (), int(data["n"]), int(data.get("start", 0)))
        if data.get("kind") == "box":
            return cls("box", tuple(int(s) for s in data["shape"]))
        raise ConfigError(f"unknown feature kind {data.get('kind')!r}")


def space_field(space: Any, what: str) -> Field:
    """The :class:`Field` of a Gymnasium space (Box or Discrete)."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return Field("discrete", (), int(space.n), int(space.start))
    if isinstance(space, spaces.Box):
        return Field("box", tuple(int(s) for s in space.shape))
    raise ConfigError(f"{what} space: {type(space).__name__} is not supported (use Box or Discrete)")


@dataclass(frozen=True)
class Encoding:
    """The reward model's inputs: which fields, in which order, each encoded how.

    :param inputs: the fields a feature row is made of, in order (any of obs, action, next_obs, factors).
    :param obs: the observation field (also used for next_obs).
    :param action: the action field.
    :param factors: factor names, in the column order of the factor matrix.
    """

    inputs: tuple[str, ...]
    obs: Field
    action: Field
    factors: tuple[str, ...]

    @classmethod
    def from_spaces(
        cls, observation_space: Any, action_space: Any, factors: Sequence[str], inputs: Sequence[str]
    ) -> Encoding:
        unknown = [i for i in inputs if i not in INPUTS]
        if unknown:
            raise ConfigError(f"reward_model.inputs: unknown input {unknown[0]!r} (choose from {', '.join(INPUTS)})")
        obs, action = space_field(observation_space, "observation"), space_field(action_space, "action")
        return cls(tuple(inputs), obs, action, tuple(factors))

    def field(self, name: str) -> Field:
        if name == "factors":
            return Field("box", (len(self.factors),))
        return self.action if name == "action" else self.obs

    @property
    def dim(self) -> int:
        """Width of a feature row."""
        return sum(self.field(k).width for k in self.inputs)

    @property
    def stored(self) -> dict[str, int]:
        """Fields an experience pool keeps, with their widths: the inputs and the factors."""
        return {k: self.field(k).width for k in INPUTS if k in self.inputs or k == "factors"}

    def factor_matrix(self, factors: Any) -> np.ndarray:
        """Factors as an array whose last axis follows :attr:`factors`, from an array or a dict name -> array."""
        with np.errstate(over="ignore"):  # a value past float32's range becomes inf: kept out downstream
            if isinstance(factors, Mapping):
                missing = [n for n in self.factors if n not in factors]
                if missing:
                    raise ConfigError(f"factors: {missing[0]!r} is missing (expected {', '.join(self.factors)})")
                return np.stack([np.asarray(factors[n], dtype=np.float32) for n in self.factors], axis=-1)
            return np.asarray(factors, dtype=np.float32)  # the dtype rows are stored in: no second copy

    def encode(self, fields: Mapping[str, Any], names: Sequence[str]) -> tuple[dict[str, np.ndarray], tuple[int, ...]]:
        """The named fields as (N, width) float32 rows, and the leading shape shared by all of them."""
        out: dict[str, np.ndarray] = {}
        lead: tuple[int, ...] | None = None
        for name in names:
            value = fields.get(name)
            if value is None:
                raise ConfigError(f"{name}: required (the reward model reads {', '.join(self.inputs)})")
            if name == "factors":
                value = self.factor_matrix(value)
            rows, shape = self.field(name).encode(name, value)
            if lead is not None and shape != lead:
                raise ConfigError(f"{name}: leading shape {shape} does not match the other inputs' {lead}")
            out[name], lead = rows, shape
        return out, lead or (0,)

    def rows(self, encoded: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Feature rows (N, dim): the encoded inputs side by side, in :attr:`inputs` order; and which
        rows were finite. A non-finite value (a NaN factor, a value that overflowed float32) is
        replaced by 0 in its row, so it never reaches the network; callers keep such rows out of
        every reward and statistic with the mask."""
        rows = np.concatenate([encoded[k] for k in self.inputs], axis=1)
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            rows[~finite] = np.nan_to_num(rows[~finite], nan=0.0, posinf=0.0, neginf=0.0)
        return rows, finite

    def as_json(self) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "obs": self.obs.as_json(),
            "action": self.action.as_json(),
            "factors": list(self.factors),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Encoding:
        obs, action = Field.from_json(data["obs"]), Field.from_json(data["action"])
        return cls(tuple(data["inputs"]), obs, action, tuple(data["factors"]))
