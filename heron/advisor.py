"""The ranking advisor: which levels of a ranking decide the pairs, and the margins that would let them all speak.

The core (:func:`advise`) is pure array math over unit factor aggregates and sampled pairs. A
ranking whose first level decides nearly every pair is one factor in disguise (continuous factors
at zero margin tie almost never); a level that almost never decides is silent, and a sparse top
factor (a goal reached in few transitions) is better compared over segments or episodes.
:func:`inspect_run` reads a run directory (``config.yaml``, ``metrics.csv`` and the experience
pool of its latest checkpoint) and :func:`render` prints the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from heron.errors import ConfigError
from heron.hierarchy import Factor, Hierarchy, finite_std
from heron.preferences import ExperiencePool, UnitKind, aggregate, sample_pairs

if TYPE_CHECKING:
    from rich.console import Console

    from heron.config import ComparisonConfig
    from heron.loop import HeronLoop

DISGUISE_SHARE = 0.95  # the first level deciding at least this share of pairs: one factor in disguise
SILENT_SHARE = 0.02  # a lower level deciding less than this share of the pairs that reach it: silent
SPARSE_TOP_SHARE = 0.05  # the first level deciding less than this share of pairs: a sparse top factor
MIN_REACHED = 20  # pairs a lower level must be reached by before it is called silent
ADVICE_SEED = 0  # the pair sample the advisor draws from a pool


@dataclass(frozen=True)
class LevelAdvice:
    """One level of the ranking, measured on a sample of pairs.

    :param name: the factor.
    :param margin: the level's margin now, in the factor's unit (a ``std`` margin times ``std``).
    :param std: the factor's standard deviation over the compared units (NaN when unknown).
    :param reached: share of all pairs that reach this level (every level above tied).
    :param decided: share of all pairs this level decides.
    :param suggested_margin: the margin, in the factor's unit, at which this level leaves at least
        the target share of the pairs reaching it to the levels below, with the levels above at
        their suggested margins too (None for the last level, or when no pair reaches it).
    :param suggested_decided: share of all pairs this level decides with every suggested margin.
    """

    name: str
    margin: float
    std: float
    reached: float
    decided: float
    suggested_margin: float | None = None
    suggested_decided: float | None = None

    @property
    def decided_of_reached(self) -> float | None:
        """Share of the pairs reaching this level that it decides (None when none reach it)."""
        return self.decided / self.reached if self.reached > 0 else None

    @property
    def margin_std(self) -> float | None:
        """The current margin in standard deviations (None when the std is 0 or unknown)."""
        return _in_std(self.margin, self.std)

    @property
    def suggested_std(self) -> float | None:
        """The suggested margin in standard deviations (None when there is none or the std is 0)."""
        return None if self.suggested_margin is None else _in_std(self.suggested_margin, self.std)


@dataclass(frozen=True)
class Flag:
    """Something the advisor found.

    :param kind: ``disguise`` (the first level decides nearly every pair), ``silent`` (a lower level
        almost never decides the pairs reaching it) or ``sparse-top`` (the first level almost never decides).
    :param level: index of the level concerned (0: the most important).
    :param message: one line with the numbers.
    """

    kind: str
    level: int
    message: str


@dataclass(frozen=True)
class Advice:
    """The advisor's findings for one ranking.

    :param levels: one entry per level, most important first.
    :param pairs: pairs measured (0 when only ``metrics.csv`` shares were available).
    :param unlabeled: share of pairs no level decided at the current margins.
    :param target_share: the share of the pairs reaching a level that its suggested margin leaves to the levels below.
    :param flags: what stands out, with numbers.
    :param unit: the comparison unit the pairs were made of.
    :param unit_shares: when the top factor is sparse, the share of pairs the first level would
        decide with each other comparison unit (``{"segment": 0.08, "episode": 0.41}``).
    """

    levels: tuple[LevelAdvice, ...]
    pairs: int
    unlabeled: float
    target_share: float
    flags: tuple[Flag, ...]
    unit: str = "transition"
    unit_shares: dict[str, float] = field(default_factory=dict)

    def suggested_hierarchy(self, hierarchy: Hierarchy) -> Hierarchy:
        """The ranking with the suggested margins as ``std`` margins, 3 significant digits (last level: its own)."""
        factors = []
        for f, level in zip(hierarchy.factors, self.levels, strict=True):
            multiple = level.suggested_std
            factors.append(f if multiple is None else Factor(f.name, f.direction, float(f"{multiple:.3g}"), "std"))
        return Hierarchy(factors)

    def as_json(self) -> dict[str, Any]:
        """Plain data (levels with their derived shares and std multiples)."""
        data = asdict(self)
        for entry, level in zip(data["levels"], self.levels, strict=True):
            entry |= {
                "decided_of_reached": level.decided_of_reached,
                "margin_std": level.margin_std,
                "suggested_std": level.suggested_std,
            }
        return data


def _in_std(margin: float, std: float) -> float | None:
    return margin / std if math.isfinite(std) and std > 0 else None


def _reached(gap: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """Share of the pairs that reach each level, for signed gaps (P, K) and absolute margins (K,).

    A pair reaches level ``l`` when every level above tied (``|gap| <= margin``; a non-finite gap
    never ties, so it stops the descent as in :meth:`heron.Hierarchy.compare_detailed`).
    """
    reached = np.ones(gap.shape, dtype=bool)
    reached[:, 1:] = np.cumprod(np.abs(gap) <= margins, axis=1)[:, :-1]
    return reached.sum(axis=0) / max(len(gap), 1)


def suggest_margins(gap: np.ndarray, target_share: float) -> np.ndarray:
    """Margins, level by level, that leave at least ``target_share`` of the pairs reaching each level
    to the levels below, each level reached with the suggested margins above it.

    The margin of level ``l`` is the smallest ``m`` with ``|gap| <= m`` for at least ``target_share``
    of the finite gaps of the pairs reaching ``l`` (the inverted-CDF quantile). The last level and a
    level no finite pair reaches get NaN.

    :param gap: signed gaps ``s * (z(a) - z(b))`` of the pairs, shape (P, K).
    :param target_share: in (0, 1).
    """
    k = gap.shape[1]
    margins = np.full(k, np.nan)
    alive = np.ones(len(gap), dtype=bool)
    for level in range(k - 1):  # K is a handful of factors; every level is one vectorized quantile
        size = np.abs(gap[alive, level])
        size = size[np.isfinite(size)]
        if len(size) == 0:
            break
        margins[level] = float(np.quantile(size, target_share, method="inverted_cdf"))
        alive &= np.abs(gap[:, level]) <= margins[level]
    return margins


def advise(
    z: np.ndarray,
    hierarchy: Hierarchy,
    pairs: np.ndarray,
    target_share: float = 0.5,
    scale: np.ndarray | None = None,
) -> Advice:
    """Per-level decided shares at the current margins, flags, and the margins that let every level speak.

    :param z: factor aggregates of the compared units, shape (n_units, K), in the ranking's order.
    :param hierarchy: the ranking.
    :param pairs: unit indices of the pairs, shape (P, 2).
    :param target_share: share of the pairs reaching a level that its suggested margin leaves to the levels below.
    :param scale: per-factor standard deviations for ``std`` margins (default: over ``z``, as the loop does).
    """
    if not 0 < target_share < 1:
        raise ConfigError(f"target share must be in (0, 1), got {target_share!r}")
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] != len(hierarchy):
        raise ConfigError(f"advisor: expected factor aggregates of shape (n_units, {len(hierarchy)}), got {z.shape}")
    std = finite_std(z) if scale is None else np.asarray(scale, dtype=np.float64)
    za, zb = z[pairs[:, 0]], z[pairs[:, 1]]
    margins = hierarchy.margins(za, zb, std)
    with np.errstate(invalid="ignore"):
        gap = (za - zb) * hierarchy.signs
    suggested = suggest_margins(gap, target_share)
    # The shares come from the loop's own decision tree, at the current margins and at the suggested ones.
    shares = hierarchy.compare_detailed(za, zb, std).level_shares(len(hierarchy))
    trial = Hierarchy(
        replace(f, margin=float(m), margin_mode="absolute")
        for f, m in zip(hierarchy.factors, np.where(np.isnan(suggested), margins, suggested), strict=True)
    )
    trial_shares = trial.compare_detailed(za, zb).level_shares(len(hierarchy))
    reached = _reached(gap, margins)
    levels = tuple(
        LevelAdvice(
            name=name,
            margin=float(margins[i]),
            std=float(std[i]),
            reached=float(reached[i]),
            decided=float(shares[i]),
            suggested_margin=None if np.isnan(suggested[i]) else float(suggested[i]),
            suggested_decided=float(trial_shares[i]),
        )
        for i, name in enumerate(hierarchy.names)
    )
    return Advice(levels, len(pairs), float(shares[-1]), target_share, flags(levels, len(pairs)))


def flags(levels: Sequence[LevelAdvice], pairs: int = 0) -> tuple[Flag, ...]:
    """What stands out in per-level shares: one factor in disguise, silent levels, a sparse top factor.

    :param levels: the levels with their ``reached`` and ``decided`` shares (and suggestions, if any).
    :param pairs: pairs behind the shares (0: unknown, as for shares read from ``metrics.csv``).
    """
    found: list[Flag] = []
    top = levels[0]
    below = ", ".join(level.name for level in levels[1:])
    if len(levels) > 1 and top.decided >= DISGUISE_SHARE:
        message = f"{top.name} decides {top.decided:.1%} of pairs (>= {DISGUISE_SHARE:.0%}): one factor in disguise"
        if top.suggested_margin is not None and top.suggested_decided is not None:
            message += (
                f"; margin {top.suggested_margin:.4g} ({_std_text(top.suggested_std)}) leaves "
                f"{1 - top.suggested_decided:.0%} of pairs to {below}"
            )
        found.append(Flag("disguise", 0, message))
    if top.decided < SPARSE_TOP_SHARE:
        found.append(
            Flag(
                "sparse-top",
                0,
                f"{top.name} decides {top.decided:.1%} of pairs (< {SPARSE_TOP_SHARE:.0%}): a sparse top factor; "
                "compare segments or episodes (comparison.unit), and set reward_model.offset "
                "(high when reaching it ends the episode, low when failing does)",
            )
        )
    for i, level in enumerate(levels[1:], start=1):
        share = level.decided_of_reached
        enough = level.reached * pairs >= MIN_REACHED if pairs else level.reached >= 0.01
        if share is None or not enough or share >= SILENT_SHARE:
            continue
        message = (
            f"{level.name} decides {share:.1%} of the {level.reached:.1%} of pairs reaching it "
            f"(< {SILENT_SHARE:.0%}): silent"
        )
        if level.margin > 0:
            message += f"; its margin {level.margin:.4g} ({_std_text(level.margin_std)}) ties the rest"
        found.append(Flag("silent", i, message))
    return tuple(found)


def _std_text(multiple: float | None) -> str:
    return "std is 0" if multiple is None else f"{multiple:.2g} std"


def advise_pool(
    pool: ExperiencePool,
    hierarchy: Hierarchy,
    comparison: ComparisonConfig,
    target_share: float = 0.5,
    seed: int = ADVICE_SEED,
) -> Advice | None:
    """:func:`advise` on a pool's units as the loop compares them (its unit, aggregate and pair count).

    Pairs are drawn independently (the loop draws each minibatch's pairs among ``units_per_batch``
    units: the same share of every pair of units on average). When the top factor is sparse, the
    share the first level would decide with each other unit is measured too. None when the pool
    holds fewer than two units.

    :param pool: the experience pool (its ``factors`` field in the ranking's order).
    :param hierarchy: the ranking.
    :param comparison: the run's ``comparison`` settings.
    :param target_share: see :func:`advise`.
    :param seed: seeds the pair sample.
    """
    z, pairs = _unit_pairs(pool, comparison.unit, comparison, seed)
    if len(z) < 2:
        return None
    advice = replace(advise(z, hierarchy, pairs, target_share), unit=comparison.unit)
    if not any(f.kind == "sparse-top" for f in advice.flags):
        return advice
    shares: dict[str, float] = {}
    for kind in get_args(UnitKind):
        if kind == comparison.unit:
            continue
        other, other_pairs = _unit_pairs(pool, kind, comparison, seed)
        if len(other) >= 2:
            za, zb = other[other_pairs[:, 0]], other[other_pairs[:, 1]]
            shares[kind] = float(hierarchy.compare_detailed(za, zb, finite_std(other)).level_shares(len(hierarchy))[0])
    return replace(advice, unit_shares=shares)


def _unit_pairs(
    pool: ExperiencePool, kind: UnitKind, comparison: ComparisonConfig, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A pool's units of one kind as the loop aggregates them, shape (U, K), and a sample of pairs of them."""
    index = pool.units(kind, comparison.segment_length)
    z = aggregate(pool.flat("factors").astype(np.float64), index, comparison.aggregate)
    return z, sample_pairs(len(z), comparison.pairs, np.random.default_rng(seed))


def advise_loop(loop: HeronLoop, target_share: float = 0.5) -> Advice | None:
    """:func:`advise_pool` on a :class:`heron.HeronLoop`'s recent experience (None unless it labels by a ranking)."""
    if loop.method != "heron":
        return None
    return advise_pool(loop.pool, loop.hierarchy, loop.comparison, target_share)


def flag_line(advice: Advice | None) -> str | None:
    """The flags as one line (None when nothing stands out)."""
    if advice is None or not advice.flags:
        return None
    line = "advisor: " + " | ".join(f.message for f in advice.flags)
    if advice.unit_shares:
        line += " (first level with " + ", ".join(f"{k}s: {v:.1%}" for k, v in advice.unit_shares.items()) + ")"
    return line


@dataclass(frozen=True)
class RunInspection:
    """What :func:`inspect_run` finds in a run directory.

    :param run_dir: the run directory.
    :param method: the run's method.
    :param ranking: the run's ranking, as ``name (direction, margin)`` strings.
    :param evaluations: rows of ``metrics.csv``.
    :param last: the last row of ``metrics.csv`` (empty when it has none).
    :param advice: the advisor on the latest checkpoint's pool, else on the last logged shares, else None.
    :param source: where the advice comes from: ``pool`` or ``metrics.csv``; empty without advice.
    :param note: why there are no margins, when there are none.
    """

    run_dir: str
    method: str
    ranking: tuple[str, ...]
    evaluations: int
    last: dict[str, float]
    advice: Advice | None
    source: str
    note: str

    def as_json(self) -> dict[str, Any]:
        """Plain data (non-finite numbers as None)."""
        data = {k: v for k, v in self.__dict__.items() if k != "advice"}
        data["advice"] = None if self.advice is None else self.advice.as_json()
        return _finite(data)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def inspect_run(run_dir: str | Path, target_share: float = 0.5) -> RunInspection:
    """The advisor on a run directory: its latest checkpoint's pool when it has one, else ``metrics.csv``.

    Reads ``config.yaml``, ``metrics.csv`` and ``checkpoints/`` (verified, weights-only); executes nothing.

    :param run_dir: a run directory of ``heron train`` or ``heron compare``.
    :param target_share: see :func:`advise`.
    :raises ConfigError: when the directory, its config or its checkpoint is missing or damaged.
    """
    from heron import checkpoints, report
    from heron.config import load_run, to_hierarchy

    if not 0 < target_share < 1:
        raise ConfigError(f"--target-share: must be in (0, 1), got {target_share!r}")
    run_dir, cfg = load_run(run_dir, "inspect")
    config_file = run_dir / "config.yaml"
    if cfg.hierarchy is None:
        raise ConfigError(f"{config_file}: records no hierarchy")
    hierarchy = to_hierarchy(cfg.hierarchy)
    rows = report.read_metrics(run_dir / "metrics.csv")
    last = rows[-1] if rows else {}
    ranking = tuple(
        f"{f.name} ({f.direction}, margin {f.margin:g}{' std' if f.margin_mode == 'std' else ''})"
        for f in hierarchy.factors
    )

    def found(advice: Advice | None, source: str, note: str) -> RunInspection:
        return RunInspection(str(run_dir), cfg.method, ranking, len(rows), last, advice, source, note)

    if cfg.method != "heron":
        note = f"method {cfg.method}: the ranking's levels label no pairs; margins need a heron run"
        return found(None, "", note)
    ckpt = checkpoints.latest(run_dir)
    if ckpt is not None and "loop.pt" in ckpt.state["files"]:
        state = checkpoints.load_tensors(ckpt.file("loop.pt"))
        pool = _pool_from_state(state, len(hierarchy), ckpt.path / "loop.pt")
        advice = advise_pool(pool, hierarchy, cfg.comparison, target_share)
        if advice is not None:
            return found(advice, "pool", "")
    shares = _logged_levels(hierarchy, last)
    if shares is None:
        note = "no checkpoint with experience and no level shares in metrics.csv yet"
        return found(None, "", note)
    advice = Advice(shares, 0, float(last.get("unlabeled", math.nan)), target_share, flags(shares))
    note = "no checkpoint with experience: shares from the last metrics.csv row, no margins"
    return found(advice, "metrics.csv", note)


def _pool_from_state(state: Any, n_factors: int, where: Path) -> ExperiencePool:
    """An :class:`ExperiencePool` holding a saved loop's pool."""
    try:
        saved = state["pool"]
        fields = saved["fields"]
        capacity, n_envs, width = tuple(fields["factors"].shape)
        widths = {str(k): int(v.shape[2]) for k, v in fields.items()}
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        raise ConfigError(f"{where}: holds no experience pool") from None
    if width != n_factors:
        raise ConfigError(f"{where}: the pool holds {width} factors, the ranking {n_factors}")
    pool = ExperiencePool(int(capacity), int(n_envs), widths)
    try:
        pool.load_state_dict(saved)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError):
        raise ConfigError(f"{where}: its experience pool is damaged") from None
    return pool


def _logged_levels(hierarchy: Hierarchy, row: Mapping[str, float]) -> tuple[LevelAdvice, ...] | None:
    """Levels from a metrics row's ``decided/<factor>`` shares (None when it has none)."""
    decided = [row.get(f"decided/{name}", math.nan) for name in hierarchy.names]
    if not all(math.isfinite(d) for d in decided):
        return None
    reached = 1 - np.concatenate([[0.0], np.cumsum(decided)[:-1]])
    return tuple(
        LevelAdvice(f.name, f.margin if f.margin_mode == "absolute" else math.nan, math.nan, float(r), float(d))
        for f, r, d in zip(hierarchy.factors, reached, decided, strict=True)
    )


def render(inspection: RunInspection, console: Console) -> None:
    """Print an inspection: the run, a table of levels, the flags and the suggested ranking.

    :param inspection: what :func:`inspect_run` found.
    :param console: where to print.
    """
    from rich.console import Console as Wide
    from rich.table import Table

    def say(text: str) -> None:
        console.print(text, soft_wrap=True, markup=False, highlight=False)

    last = inspection.last
    say(f"{inspection.run_dir}: method {inspection.method}, ranking {' > '.join(inspection.ranking)}")
    if last:
        say(
            f"metrics.csv: {inspection.evaluations} evaluations; last at step {int(last.get('step', 0))}: "
            f"return {last.get('return_mean', math.nan):.1f}"
        )
    advice = inspection.advice
    if advice is None:
        say(inspection.note)
        return
    what = f"{advice.pairs} pairs of {advice.unit}s, latest checkpoint" if advice.pairs else "last metrics.csv row"
    table = Table(
        title=f"levels ({what}); a suggested margin leaves {advice.target_share:.0%} of the pairs reaching its "
        "level to the levels below; 'decided then': with every suggested margin"
    )
    for column in ("level", "factor", "margin", "reached", "decided", "of reached", "suggested margin", "decided then"):
        table.add_column(column, justify="left" if column == "factor" else "right", no_wrap=True)
    for i, level in enumerate(advice.levels):
        share = level.decided_of_reached
        table.add_row(
            str(i + 1),
            level.name,
            _margin_text(level.margin, level.margin_std),
            f"{level.reached:.1%}",
            f"{level.decided:.1%}",
            "-" if share is None else f"{share:.1%}",
            "-" if level.suggested_margin is None else _margin_text(level.suggested_margin, level.suggested_std),
            "-" if level.suggested_decided is None else f"{level.suggested_decided:.1%}",
        )
    Wide(width=max(console.width, 120), file=console.file).print(table)
    say(f"unlabeled: {advice.unlabeled:.1%}")
    if inspection.note:
        say(inspection.note)
    for flag in advice.flags:
        say(f"flag: {flag.message}")
    if advice.unit_shares:
        shares = ", ".join(f"{kind}s {share:.1%}" for kind, share in advice.unit_shares.items())
        say(f"first level's share with other units: {shares}")
    if any(level.suggested_margin is not None for level in advice.levels):
        suggested = " > ".join(
            f"{level.name} {'-' if level.suggested_std is None else f'{level.suggested_std:.3g} std'}"
            for level in advice.levels[:-1]
        )
        say(f"suggested margins: {suggested}")


def _margin_text(margin: float, multiple: float | None) -> str:
    if not math.isfinite(margin):
        return "std-based"
    return f"{margin:.4g}" + ("" if multiple is None else f" ({multiple:.2g} std)")
