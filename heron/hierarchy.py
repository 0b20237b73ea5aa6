"""The ranking of reward factors and the decision tree it induces.

Pure array math: this module imports numpy and the error types only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np

from heron.errors import ConfigError

Direction = Literal["max", "min"]
MarginMode = Literal["absolute", "std"]


@dataclass(frozen=True)
class Factor:
    """One level of a ranking.

    :param name: the factor's name, as the environment reports it in ``info["factors"]``.
    :param direction: ``"max"`` when larger values are better, ``"min"`` for a cost.
    :param margin: a gap at or below this is a tie at this level (the comparison falls through to
        the next level). Must be finite and non-negative.
    :param margin_mode: ``"absolute"``: the margin is in the factor's own unit; ``"std"``: the margin
        is a multiple of the factor's standard deviation over the compared data.
    """

    name: str
    direction: Direction = "max"
    margin: float = 0.0
    margin_mode: MarginMode = "absolute"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"factor name must be a non-empty string, got {self.name!r}")
        if self.direction not in ("max", "min"):
            raise ConfigError(
                f"factor {self.name!r}: direction must be 'max' or 'min', got {self.direction!r}"
            )
        if self.margin_mode not in ("absolute", "std"):
            raise ConfigError(
                f"factor {self.name!r}: margin_mode must be 'absolute' or 'std', got {self.margin_mode!r}"
            )
        try:
            margin = float(self.margin)
        except (TypeError, ValueError):
            raise ConfigError(f"factor {self.name!r}: margin must be a number, got {self.margin!r}") from None
        if not math.isfinite(margin) or margin < 0:
            raise ConfigError(f"factor {self.name!r}: margin must be finite and >= 0, got {self.margin!r}")
        object.__setattr__(self, "margin", margin)

    @property
    def sign(self) -> float:
        """+1 when larger is better, -1 for a cost."""
        return 1.0 if self.direction == "max" else -1.0


@dataclass(frozen=True)
class Comparison:
    """Labels of a batch of pairs with what decided them.

    :param labels: int8, +1 where a is preferred, -1 where b is, 0 where unlabeled.
    :param levels: int64, index of the deciding level, -1 where no level decided.
    :param nonfinite: bool, pairs left unlabeled because a reached level held a non-finite value.
    """

    labels: np.ndarray
    levels: np.ndarray
    nonfinite: np.ndarray

    def level_shares(self, n_levels: int) -> np.ndarray:
        """Share of pairs decided at each level, then the share left unlabeled (length K + 1)."""
        n = max(len(self.levels), 1)
        counts = np.bincount(self.levels + 1, minlength=n_levels + 1)
        return np.concatenate([counts[1:], counts[:1]]) / n


class Hierarchy:
    """An ordered list of factors, most important first, and the decision tree it induces.

    A pair (a, b) is compared level by level: at level ``l`` the signed gap
    ``d = s_l * (z_l(a) - z_l(b))`` decides for a when ``d > margin_l``, for b when ``d < -margin_l``,
    and otherwise the comparison moves to the next level. When every level ties the pair is unlabeled.
    A non-finite value at a level the tree reaches leaves the pair unlabeled.

    :param factors: the ranking, most important first; strings are taken as ``Factor(name)``.
    """

    def __init__(self, factors: Iterable[Factor | str]) -> None:
        items = [Factor(f) if isinstance(f, str) else f for f in factors]
        if not items:
            raise ConfigError("hierarchy must contain at least one factor")
        for f in items:
            if not isinstance(f, Factor):
                raise ConfigError(f"hierarchy entries must be heron.Factor, got {type(f).__name__}")
        names = [f.name for f in items]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"hierarchy: duplicate factor {duplicates[0]!r}")
        self.factors: tuple[Factor, ...] = tuple(items)
        self._signs = np.array([f.sign for f in items])
        self._margins = np.array([f.margin for f in items])
        self._std_mode = np.array([f.margin_mode == "std" for f in items])

    @property
    def names(self) -> list[str]:
        """Factor names, most important first."""
        return [f.name for f in self.factors]

    @property
    def signs(self) -> np.ndarray:
        """+1 / -1 per level (a copy)."""
        return self._signs.copy()

    def __len__(self) -> int:
        return len(self.factors)

    def __repr__(self) -> str:
        return f"Hierarchy({list(self.factors)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hierarchy) and self.factors == other.factors

    def __hash__(self) -> int:
        return hash(self.factors)

    def margins(
        self, za: np.ndarray, zb: np.ndarray, scale: Sequence[float] | np.ndarray | None = None
    ) -> np.ndarray:
        """The absolute margin of each level for this batch (shape (K,))."""
        margins = self._margins.copy()
        if self._std_mode.any():
            if scale is None:
                std = finite_std(za[:, self._std_mode], zb[:, self._std_mode])
            else:
                std = np.asarray(scale, dtype=np.float64).reshape(-1)
                if std.shape != (len(self),):
                    raise ConfigError(f"scale must have shape ({len(self)},), got {std.shape}")
                std = std[self._std_mode]
            margins[self._std_mode] *= std
        return margins

    def compare_detailed(
        self, za: np.ndarray, zb: np.ndarray, scale: Sequence[float] | np.ndarray | None = None
    ) -> Comparison:
        """Labels, deciding levels and non-finite flags for pairs (za[i], zb[i]).

        :param za: factor values of the first members, shape (N, K), columns in the ranking's order.
        :param zb: factor values of the second members, same shape.
        :param scale: per-factor standard deviations for ``margin_mode="std"``; computed over
            ``za`` and ``zb`` together when omitted.
        """
        za, zb = self._check(za, zb)
        n = za.shape[0]
        if n == 0:
            empty = np.zeros(0, dtype=np.int64)
            return Comparison(np.zeros(0, dtype=np.int8), empty - 1, np.zeros(0, dtype=bool))
        margins = self.margins(za, zb, scale).astype(za.dtype)
        signs = self._signs.astype(za.dtype)
        labels = np.empty(n, dtype=np.int8)
        levels = np.empty(n, dtype=np.int64)
        nonfinite = np.empty(n, dtype=bool)
        # The margins repeated row after row, shared by every chunk: flat comparisons against them
        # run as one long contiguous loop instead of one short broadcast loop per row.
        flat_margins = np.tile(margins, min(n, _CHUNK)) if len(self) <= _WORD else None

        def run(start: int) -> None:
            part = slice(start, start + _CHUNK)
            _label_chunk(
                za[part], zb[part], signs, margins, labels[part], levels[part], nonfinite[part], flat_margins
            )

        starts = range(0, n, _CHUNK)
        if n > 2 * _CHUNK:
            list(_pool().map(run, starts))
        else:
            for start in starts:
                run(start)
        return Comparison(labels, levels, nonfinite)

    def compare(
        self, za: np.ndarray, zb: np.ndarray, scale: Sequence[float] | np.ndarray | None = None
    ) -> np.ndarray:
        """+1 where a is preferred, -1 where b is, 0 where every level ties (int8, shape (N,))."""
        return self.compare_detailed(za, zb, scale).labels

    def deciding_level(
        self, za: np.ndarray, zb: np.ndarray, scale: Sequence[float] | np.ndarray | None = None
    ) -> np.ndarray:
        """Index of the level that decided each pair, -1 where none did."""
        return self.compare_detailed(za, zb, scale).levels

    def _check(self, za: np.ndarray, zb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        za = np.asarray(za)
        zb = np.asarray(zb)
        if za.dtype.kind != "f":
            za = za.astype(np.float64)
        if zb.dtype != za.dtype:
            zb = zb.astype(za.dtype)
        k = len(self)
        if za.ndim != 2 or za.shape[1] != k or za.shape != zb.shape:
            raise ConfigError(f"compare expects two arrays of shape (N, {k}), got {za.shape} and {zb.shape}")
        return za, zb


_CHUNK = 65_536
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """Threads for large batches: numpy releases the GIL, and cache-sized chunks run faster."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    return _POOL


def _label_chunk(
    za: np.ndarray,
    zb: np.ndarray,
    signs: np.ndarray,
    margins: np.ndarray,
    labels: np.ndarray,
    levels: np.ndarray,
    nonfinite: np.ndarray,
    flat_margins: np.ndarray | None = None,
) -> None:
    """Decision tree over one chunk of pairs, written into the output views.

    A level stops the descent when it decides or when its value is unusable: ``not |gap| <= margin``
    (NaN compares False). The sign of a level never changes whether it stops (``|s * gap| == |gap|``
    and ``s * gap`` is finite where ``gap`` is, for ``s = +-1``), so the direction is applied only to
    the deciding gap.
    """
    n, k = za.shape
    if k > _WORD:
        _label_chunk_wide(za, zb, signs, margins, labels, levels, nonfinite)
        return
    if flat_margins is None:
        flat_margins = np.tile(margins, n)
    gap = np.subtract(za, zb, order="C").reshape(-1)
    # One byte per level (1 where the level ties), rows back to back, 8 bytes of padding at the end.
    ties = np.empty(n * k + _WORD, dtype=np.uint8)
    ties[n * k :] = 0
    np.less_equal(np.abs(gap), flat_margins[: n * k], out=ties[: n * k].view(bool))
    # Each row's bytes read as one little-endian word (unaligned, overlapping the next row, masked
    # off); flipping the low bit of each of the k bytes turns "ties" into "stops".
    words = np.ndarray((n,), dtype="<u8", buffer=ties, strides=(k,))
    stops = words & np.uint64((1 << (8 * k)) - 1)
    stops ^= np.uint64(int.from_bytes(b"\x01" * k, "little"))
    # The lowest set bit is 2 ** (8 * level); multiplying by _FIRST_BYTE moves level + 1 into the
    # top byte, and 0 (no level stops) gives 0, hence level -1.
    stops &= ~stops + np.uint64(1)
    stops *= _FIRST_BYTE
    stops >>= np.uint64(56)
    level = stops.astype(np.int64)
    level -= 1
    reached = level >= 0
    at = np.maximum(level, 0)
    deciding_gap = gap.take(np.arange(0, n * k, k) + at)
    finite = np.isfinite(deciding_gap)
    decided = reached & finite
    direction = np.sign(deciding_gap)
    direction *= signs.take(at)
    labels[:] = np.where(decided, direction, 0)
    levels[:] = np.where(decided, level, -1)
    nonfinite[:] = reached & ~finite


_WORD = 8  # levels handled by the one-word-per-row path of _label_chunk
_FIRST_BYTE = np.uint64(sum((_WORD - i) << (8 * i) for i in range(_WORD)))


def _label_chunk_wide(
    za: np.ndarray,
    zb: np.ndarray,
    signs: np.ndarray,
    margins: np.ndarray,
    labels: np.ndarray,
    levels: np.ndarray,
    nonfinite: np.ndarray,
) -> None:
    """Decision tree over one chunk of pairs for hierarchies of more than 8 levels."""
    gap = za - zb
    gap *= signs
    stops = ~(np.abs(gap) <= margins)
    level = stops.argmax(axis=1)
    rows = np.arange(len(gap))
    reached = stops[rows, level]
    deciding_gap = gap[rows, level]
    finite = np.isfinite(deciding_gap)
    decided = reached & finite
    labels[:] = np.where(decided, np.sign(deciding_gap), 0)
    levels[:] = np.where(decided, level, -1)
    nonfinite[:] = reached & ~finite


def finite_std(*arrays: np.ndarray) -> np.ndarray:
    """Per-column standard deviation over the rows of all arrays, ignoring non-finite values.

    A column with no finite value gets 0.
    """
    if all(np.isfinite(a).all() for a in arrays):
        n = sum(a.shape[0] for a in arrays)
        mean = sum(a.sum(axis=0, dtype=np.float64) for a in arrays) / max(n, 1)
        sq = sum(((a - mean) ** 2).sum(axis=0) for a in arrays)
        return np.sqrt(sq / max(n, 1))
    both = np.concatenate(arrays, axis=0).astype(np.float64)
    finite = np.isfinite(both)
    count = np.maximum(finite.sum(axis=0), 1)
    mean = np.where(finite, both, 0.0).sum(axis=0) / count
    return np.sqrt((np.where(finite, both - mean, 0.0) ** 2).sum(axis=0) / count)
