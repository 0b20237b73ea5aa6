"""What the reward model reads: raw observations, actions and factors turned into flat float rows.

An :class:`Encoding` is plain data (it round-trips through JSON), so a saved reward model carries
it and scores raw observations and actions with no other heron code. Pure numpy; Gymnasium spaces
are only read when an encoding is first built.

Each space becomes columns of a row: a Box its values, flattened; a Discrete a one-hot vector; a
MultiDiscrete one one-hot vector per component, side by side; a MultiBinary its 0/1 values; a Dict
each of its sub-spaces in sorted key order (a Tuple in position order), nested ones too. An image
(a Box of uint8 in [0, 255] with three axes, as SB3 sees one) is not encoded: the reward model is
an MLP, so a run whose observations are images reads ``factors`` (and may read actions), and its
pool never stores a frame.
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

    :param kind: ``"box"`` (floats, flattened), ``"discrete"`` (an integer, one-hot encoded),
        ``"multi_discrete"`` (integers, each one-hot encoded, concatenated), ``"multi_binary"``
        (0/1 values as floats), ``"image"`` (uint8 frames: never encoded, see :class:`Encoding`),
        ``"dict"`` or ``"tuple"`` (each part encoded by its own field, concatenated).
    :param shape: the shape of one value (``box``, ``multi_binary``, ``image``; ``multi_discrete``:
        the shape of its ``nvec``); ``()`` otherwise.
    :param n: the number of values (``discrete``).
    :param start: the smallest value (``discrete``).
    :param nvec: the number of values of each component, flattened (``multi_discrete``).
    :param starts: the smallest value of each component, flattened (``multi_discrete``).
    :param parts: ``(key, field)`` of each part, in encoding order: sorted keys (``dict``) or
        positions (``tuple``).
    """

    kind: str
    shape: tuple[int, ...] = ()
    n: int = 0
    start: int = 0
    nvec: tuple[int, ...] = ()
    starts: tuple[int, ...] = ()
    parts: tuple[tuple[str, Field], ...] = ()

    @property
    def width(self) -> int:
        """Columns of this input in a feature row."""
        if self.kind == "discrete":
            return self.n
        if self.kind == "multi_discrete":
            return sum(self.nvec)
        if self.kind in ("dict", "tuple"):
            return sum(f.width for _, f in self.parts)
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def has_image(self) -> bool:
        """Whether this field is, or holds, an image."""
        return self.kind == "image" or any(f.has_image for _, f in self.parts)

    def encode(self, name: str, x: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        """Rows of shape (N, width) and the leading shape they came from (``x.shape`` minus one value's shape).

        A ``dict`` takes a mapping key -> array, a ``tuple`` a sequence of arrays, each with the same leading shape.
        """
        if self.kind in ("dict", "tuple"):
            return self._encode_parts(name, x)
        x = np.asarray(x)
        if self.kind in ("discrete", "multi_discrete"):
            return self._one_hot(name, x)
        if self.kind == "image":
            raise ConfigError(f"{name}: images are not encoded for the reward model (read factors instead)")
        lead = self._lead(name, x)
        if self.kind == "multi_binary" and not ((x == 0) | (x == 1)).all():
            raise ConfigError(f"{name}: a MultiBinary{self.shape} value holds something other than 0 and 1")
        return x.astype(np.float32, copy=False).reshape(-1, self.width), lead

    def _one_hot(self, name: str, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """A ``discrete`` value (one component) or a ``multi_discrete`` one: each component one-hot, side by side."""
        nvec: tuple[int, ...]
        starts: tuple[int, ...]
        if self.kind == "discrete":
            nvec, starts, lead = (self.n,), (self.start,), x.shape
            space, bounds = f"Discrete({self.n})", f"Discrete({self.n}, start={self.start})"
        else:
            nvec, starts, lead = self.nvec, self.starts, self._lead(name, x)
            space = f"MultiDiscrete({list(self.nvec)})"
            bounds = f"MultiDiscrete({list(self.nvec)}, start={list(self.starts)})"
        limits = np.array(nvec, dtype=np.int64)
        index = _integers(name, x, space).reshape(-1, len(limits)) - np.array(starts, dtype=np.int64)
        if index.size and ((index < 0) | (index >= limits)).any():
            raise ConfigError(f"{name}: values outside {bounds}")
        rows = np.zeros((len(index), int(limits.sum())), dtype=np.float32)
        rows[np.arange(len(index))[:, None], np.cumsum(limits) - limits + index] = 1.0  # each block's offset + value
        return rows, lead

    def _lead(self, name: str, x: np.ndarray) -> tuple[int, ...]:
        """The leading shape of ``x``, whose trailing axes must be :attr:`shape`."""
        k = len(self.shape)
        if x.ndim < k or x.shape[x.ndim - k :] != self.shape:
            raise ConfigError(f"{name}: expected values of shape {self.shape}, got an array of shape {x.shape}")
        return x.shape[: x.ndim - k]

    def _encode_parts(self, name: str, x: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        """A ``dict`` or ``tuple`` value: every part encoded, side by side in :attr:`parts` order."""
        if self.kind == "dict" and not isinstance(x, Mapping):
            raise ConfigError(f"{name}: expected a dict of arrays for a Dict space, got {type(x).__name__}")
        if self.kind == "tuple" and (not isinstance(x, Sequence) or len(x) != len(self.parts)):
            raise ConfigError(f"{name}: expected a sequence of {len(self.parts)} arrays for a Tuple space")
        blocks = []
        for key, field in self.parts:
            if self.kind == "dict" and key not in x:
                raise ConfigError(f"{name}: key {key!r} is missing (expected {', '.join(k for k, _ in self.parts)})")
            blocks.append(field.encode(f"{name}.{key}", x[key] if self.kind == "dict" else x[int(key)]))
        lead = blocks[0][1]
        for (key, _), (_, shape) in zip(self.parts, blocks, strict=True):
            if shape != lead:
                raise ConfigError(f"{name}.{key}: leading shape {shape} does not match the other parts' {lead}")
        return np.concatenate([rows for rows, _ in blocks], axis=1), lead

    def as_json(self) -> dict[str, Any]:
        if self.kind == "discrete":
            return {"kind": "discrete", "n": self.n, "start": self.start}
        if self.kind == "multi_discrete":
            return {"kind": self.kind, "shape": list(self.shape), "nvec": list(self.nvec), "starts": list(self.starts)}
        if self.kind in ("dict", "tuple"):
            return {"kind": self.kind, "parts": [[k, f.as_json()] for k, f in self.parts]}
        return {"kind": self.kind, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Field:
        kind = data.get("kind")
        if kind == "discrete":
            return cls("discrete", (), int(data["n"]), int(data.get("start", 0)))
        if kind == "multi_discrete":
            nvec, starts = tuple(int(v) for v in data["nvec"]), tuple(int(v) for v in data["starts"])
            return cls(kind, tuple(int(s) for s in data["shape"]), nvec=nvec, starts=starts)
        if kind in ("dict", "tuple"):
            return cls(kind, parts=tuple((str(k), cls.from_json(f)) for k, f in data["parts"]))
        if kind in ("box", "multi_binary", "image"):
            return cls(kind, tuple(int(s) for s in data["shape"]))
        raise ConfigError(f"unknown feature kind {kind!r}")


def _integers(name: str, x: np.ndarray, space: str) -> np.ndarray:
    """``x`` as int64, refused unless it holds whole numbers."""
    if x.dtype.kind not in "iub" and not (x.dtype.kind == "f" and np.all(np.mod(x, 1) == 0)):
        raise ConfigError(f"{name}: expected integers for a {space} space, got dtype {x.dtype}")
    return x.astype(np.int64)


def is_image(space: Any) -> bool:
    """Whether a Gymnasium space is an image as SB3 sees one (``is_image_space``): a Box of uint8
    in [0, 255] with three axes, (H, W, C) or (C, H, W)."""
    from gymnasium import spaces

    return (
        isinstance(space, spaces.Box)
        and len(space.shape) == 3
        and space.dtype == np.uint8
        and bool(np.all(space.low == 0) and np.all(space.high == 255))
    )


def space_field(space: Any, what: str) -> Field:
    """The :class:`Field` of a Gymnasium space: Box (an image if :func:`is_image`), Discrete,
    MultiDiscrete, MultiBinary, and Dict or Tuple of those (nested too)."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return Field("discrete", (), int(space.n), int(space.start))
    if isinstance(space, spaces.Box):
        return Field("image" if is_image(space) else "box", tuple(int(s) for s in space.shape))
    if isinstance(space, spaces.MultiDiscrete):
        nvec, starts = tuple(map(int, space.nvec.reshape(-1))), tuple(map(int, np.asarray(space.start).reshape(-1)))
        return Field("multi_discrete", tuple(int(s) for s in space.shape), nvec=nvec, starts=starts)
    if isinstance(space, spaces.MultiBinary):
        return Field("multi_binary", tuple(int(s) for s in space.shape))
    if isinstance(space, spaces.Dict | spaces.Tuple):
        if not space.spaces:
            raise ConfigError(f"{what} space: an empty {type(space).__name__} has nothing to encode")
        if isinstance(space, spaces.Dict):
            keys = sorted(space.spaces)
            return Field("dict", parts=tuple((str(k), space_field(space.spaces[k], f"{what}.{k}")) for k in keys))
        return Field("tuple", parts=tuple((str(i), space_field(s, f"{what}.{i}")) for i, s in enumerate(space.spaces)))
    raise ConfigError(
        f"{what} space: {type(space).__name__} is not supported "
        "(use Box, Discrete, MultiDiscrete, MultiBinary, or a Dict or Tuple of them)"
    )


@dataclass(frozen=True)
class Encoding:
    """The reward model's inputs: which fields, in which order, each encoded how.

    :param inputs: the fields a feature row is made of, in order (any of obs, action, next_obs, factors);
        a field that is or holds an image cannot be one (:class:`ConfigError`).
    :param obs: the observation field (also used for next_obs).
    :param action: the action field.
    :param factors: factor names, in the column order of the factor matrix.
    """

    inputs: tuple[str, ...]
    obs: Field
    action: Field
    factors: tuple[str, ...]

    def __post_init__(self) -> None:
        images = [k for k in self.inputs if k != "factors" and self.field(k).has_image]
        if images:
            raise ConfigError(
                f"reward_model.inputs: {images[0]} holds images, which the reward model does not read "
                "(it is an MLP, with no CNN); use inputs: [factors] (or [action, factors])"
            )

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
        return out, lead if lead is not None else (0,)

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
