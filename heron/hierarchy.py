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
            raise ConfigError(f"factor {self.name!r}: direction must be 'max' or 'min', got {self.direction!r}")
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

    def margins(self, za: np.ndarray, zb: np.ndarray, scale: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        """The absolute margin of each level for this batch (shape (K,))."""
        margins = self._margins.copy()
        if self._std_mode.any():
            if scale is None:
                std = finite_std(za, zb, columns=self._std_mode)
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

        def run(start: int) -> None:
            part = slice(start, start + _CHUNK)
            # inf - inf is NaN without a warning: such pairs are flagged non-finite, never raised.
            out = labels[part], levels[part], nonfinite[part]
            with np.errstate(invalid="ignore"):
                _label_chunk(za[part], zb[part], signs, margins, *out)

        starts = range(0, n, _CHUNK)
        if n > 2 * _CHUNK:
            list(_pool().map(run, starts))
        else:
            for start in starts:
                run(start)
        return Comparison(labels, levels, nonfinite)

    def compare(self, za: np.ndarray, zb: np.ndarray, scale: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
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
) -> None:
    """Decision tree over one chunk of pairs, written into the output views."""
    gap = za - zb
    gap *= signs
    # A level stops the descent when it decides or when its value is unusable (NaN compares False).
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


def finite_std(*arrays: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """Per-column population standard deviation over the rows of all arrays, ignoring non-finite values.

    A column with no finite value gets 0. Computed chunk by chunk (threaded for large inputs) and
    combined exactly: total M2 = sum of chunk M2 + sum of count * (chunk mean - mean) ** 2.

    :param columns: a boolean or index selection of columns (default: all).
    """
    chunks = [(a, start) for a in arrays for start in range(0, len(a), _CHUNK)]

    def moments(item: tuple[np.ndarray, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        array, start = item
        x = array[start : start + _CHUNK]
        x = np.asarray(x if columns is None else x[:, columns], dtype=np.float64)
        finite = np.isfinite(x)
        if finite.all():
            mean = x.mean(axis=0)
            return np.full(x.shape[1], len(x), dtype=np.float64), mean, ((x - mean) ** 2).sum(axis=0)
        count = finite.sum(axis=0).astype(np.float64)
        with np.errstate(invalid="ignore"):
            mean = np.where(finite, x, 0.0).sum(axis=0) / np.maximum(count, 1)
            m2 = (np.where(finite, x - mean, 0.0) ** 2).sum(axis=0)
        return count, mean, m2

    total_rows = sum(len(a) for a in arrays)
    parts = list(_pool().map(moments, chunks) if total_rows > 2 * _CHUNK else map(moments, chunks))
    if not parts:
        width = arrays[0].shape[1] if columns is None else len(np.arange(arrays[0].shape[1])[columns])
        return np.zeros(width)
    counts, means, m2s = (np.stack(p) for p in zip(*parts, strict=True))
    total = counts.sum(axis=0)
    mean = (counts * means).sum(axis=0) / np.maximum(total, 1)
    m2 = m2s.sum(axis=0) + (counts * (means - mean) ** 2).sum(axis=0)
    return np.sqrt(m2 / np.maximum(total, 1))
