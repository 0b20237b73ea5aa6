"""Hierarchy: the decision tree induced by a ranking, checked against a per-pair reference."""

from __future__ import annotations

import math
import statistics
import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import heron
from heron import ConfigError, Factor, Hierarchy
from heron.hierarchy import _CHUNK, Comparison

NAN, INF = float("nan"), float("inf")
# Small integer (and half-integer) sets: exact ties and gaps equal to the margin are common.
FINITE = [-2.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0]
NONFINITE = [NAN, INF, -INF]
MARGINS = [0.0, 0.5, 1.0, 2.0]
SCALES = [0.0, 0.5, 1.0, 2.0]  # margin * scale is exact in binary floating point


# -- the reference: one pair at a time, straight from the specification ------------------------------


def reference_margins(factors, za, zb, scale):
    margins = []
    for level, factor in enumerate(factors):
        margin = factor.margin
        if factor.margin_mode == "std":
            if scale is not None:
                margin *= float(scale[level])
            else:
                values = [float(v) for v in [*za[:, level], *zb[:, level]] if math.isfinite(v)]
                margin *= statistics.pstdev(values) if values else 0.0
        margins.append(margin)
    return margins


def reference_compare(factors, za, zb, scale=None, tolerance=0.0):
    """Labels, levels, non-finite flags, and whether a visited gap lay within ``tolerance`` of a margin."""
    margins = reference_margins(factors, za, zb, scale)
    labels, levels, nonfinite, ambiguous = [], [], [], []
    for i in range(len(za)):
        label, level, flagged, near = 0, -1, False, False
        for lvl, factor in enumerate(factors):
            a, b = float(za[i, lvl]), float(zb[i, lvl])
            if not (math.isfinite(a) and math.isfinite(b)):
                flagged = True
                break
            d = a - b if factor.direction == "max" else b - a
            if abs(abs(d) - margins[lvl]) <= tolerance * max(1.0, margins[lvl]):
                near = True
            if d > margins[lvl]:
                label, level = 1, lvl
                break
            if d < -margins[lvl]:
                label, level = -1, lvl
                break
        labels.append(label)
        levels.append(level)
        nonfinite.append(flagged)
        ambiguous.append(near)
    return (
        np.array(labels, dtype=np.int64),
        np.array(levels, dtype=np.int64),
        np.array(nonfinite, dtype=bool),
        np.array(ambiguous, dtype=bool),
    )


# -- strategies ---------------------------------------------------------------------------------------


@st.composite
def factor_lists(draw, modes=("absolute", "std")):
    # Up to 8 levels and more than 8 (the implementation packs a row's levels into one 64-bit word).
    k = draw(st.integers(1, 4) | st.sampled_from([7, 8, 9, 11]))
    return [
        Factor(
            f"f{i}",
            draw(st.sampled_from(["max", "min"])),
            draw(st.sampled_from(MARGINS)),
            draw(st.sampled_from(list(modes))),
        )
        for i in range(k)
    ]


@st.composite
def cases(draw, nonfinite=True, modes=("absolute", "std"), force_scale=False):
    factors = draw(factor_lists(modes=modes))
    k = len(factors)
    n = draw(st.integers(0, 40))
    pool = FINITE * 4 + NONFINITE if nonfinite and draw(st.booleans()) else FINITE
    elements = st.sampled_from(pool)
    za = draw(hnp.arrays(np.float64, (n, k), elements=elements))
    zb = draw(hnp.arrays(np.float64, (n, k), elements=elements))
    scale_strategy = hnp.arrays(np.float64, k, elements=st.sampled_from(SCALES))
    scale = draw(scale_strategy if force_scale else st.none() | scale_strategy)
    if scale is not None and draw(st.booleans()):
        scale = [float(s) for s in scale]  # any sequence of floats will do
    return factors, za, zb, scale


# -- the decision tree against the reference ----------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(cases())
def test_compare_matches_reference(case):
    factors, za, zb, scale = case
    hierarchy = Hierarchy(factors)
    std_from_data = scale is None and any(f.margin_mode == "std" for f in factors)
    # A std computed from the data may differ from the reference's in the last bit; pairs whose gap
    # lies on such a margin are skipped (exact boundaries are covered by absolute margins and `scale`).
    labels, levels, nonfinite, ambiguous = reference_compare(
        factors, za, zb, scale, tolerance=1e-9 if std_from_data else -1.0
    )
    detail = hierarchy.compare_detailed(za, zb, scale)

    assert detail.labels.dtype == np.int8 and detail.labels.shape == (len(za),)
    assert detail.levels.dtype == np.int64 and detail.levels.shape == (len(za),)
    assert detail.nonfinite.dtype == bool and detail.nonfinite.shape == (len(za),)
    keep = ~ambiguous
    np.testing.assert_array_equal(detail.labels[keep], labels[keep])
    np.testing.assert_array_equal(detail.levels[keep], levels[keep])
    np.testing.assert_array_equal(detail.nonfinite[keep], nonfinite[keep])
    np.testing.assert_array_equal(hierarchy.compare(za, zb, scale), detail.labels)
    np.testing.assert_array_equal(hierarchy.deciding_level(za, zb, scale), detail.levels)
    np.testing.assert_allclose(
        hierarchy.margins(za, zb, scale), reference_margins(factors, za, zb, scale), rtol=1e-12, atol=1e-12
    )


@settings(max_examples=200, deadline=None)
@given(cases(force_scale=True))
def test_swapping_the_pair_flips_the_label(case):
    factors, za, zb, scale = case
    hierarchy = Hierarchy(factors)
    forward = hierarchy.compare_detailed(za, zb, scale)
    backward = hierarchy.compare_detailed(zb, za, scale)
    np.testing.assert_array_equal(backward.labels, -forward.labels)
    np.testing.assert_array_equal(backward.levels, forward.levels)
    np.testing.assert_array_equal(backward.nonfinite, forward.nonfinite)


@settings(max_examples=200, deadline=None)
@given(cases(nonfinite=False, force_scale=True), st.sampled_from(NONFINITE))
def test_nonfinite_values_below_the_deciding_level_do_not_matter(case, bad):
    factors, za, zb, scale = case
    hierarchy = Hierarchy(factors)
    before = hierarchy.compare_detailed(za, zb, scale)
    assert not before.nonfinite.any()
    za2, zb2 = za.copy(), zb.copy()
    for i, level in enumerate(before.levels):
        if level >= 0:
            za2[i, level + 1 :] = bad
            zb2[i, level + 1 :] = bad if i % 2 else 0.0
    after = hierarchy.compare_detailed(za2, zb2, scale)
    np.testing.assert_array_equal(after.labels, before.labels)
    np.testing.assert_array_equal(after.levels, before.levels)
    assert not after.nonfinite[before.levels >= 0].any()


def test_documented_examples():
    hierarchy = Hierarchy([Factor("progress", "max", 1.0), Factor("energy", "min", 0.0)])
    za = np.array([[5.0, 3.0], [5.0, 3.0], [2.0, 3.0], [4.0, 1.0], [4.0, 2.0], [NAN, 0.0], [4.0, INF]])
    zb = np.array([[3.0, 0.0], [4.0, 1.0], [3.0, 1.0], [4.0, 1.0], [4.0, 1.0], [0.0, 0.0], [9.0, 0.0]])
    detail = hierarchy.compare_detailed(za, zb)
    # gap 2 > 1 decides; gap 1 == margin ties and falls to energy (a costs more); gap -1 ties, a cheaper;
    # all tie; b cheaper; NaN at the first level; progress decides before the infinite energy is reached.
    assert detail.labels.tolist() == [1, -1, -1, 0, -1, 0, -1]
    assert detail.levels.tolist() == [0, 1, 1, -1, 1, -1, 0]
    assert detail.nonfinite.tolist() == [False, False, False, False, False, True, False]


@pytest.mark.parametrize(
    ("a", "b"), [(NAN, 1.0), (1.0, NAN), (INF, 1.0), (1.0, -INF), (INF, INF), (-INF, -INF), (NAN, NAN)]
)
@pytest.mark.parametrize("direction", ["max", "min"])
def test_nonfinite_at_a_reached_level_leaves_the_pair_unlabeled(a, b, direction):
    hierarchy = Hierarchy([Factor("x", "max", 0.5), Factor("y", direction, 0.0)])
    za = np.array([[1.0, a], [1.0, a]])
    zb = np.array([[1.0, b], [3.0, b]])  # second pair is decided at level 0, before y is reached
    detail = hierarchy.compare_detailed(za, zb)
    assert detail.labels.tolist() == [0, -1]
    assert detail.levels.tolist() == [-1, 0]
    assert detail.nonfinite.tolist() == [True, False]


@pytest.mark.parametrize("n", [3, 2 * _CHUNK + 5])
@pytest.mark.parametrize("k", [2, 9])
def test_nonfinite_values_never_raise_even_with_warnings_as_errors(n, k):
    hierarchy = Hierarchy([Factor(f"f{i}", "min", 1.0, "std") for i in range(k)])
    za = np.full((n, k), INF)
    zb = np.full((n, k), INF)
    zb[::3] = -INF
    zb[1::3] = NAN
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detail = hierarchy.compare_detailed(za, zb)
    assert detail.nonfinite.all() and (detail.labels == 0).all() and (detail.levels == -1).all()


def test_std_margin_uses_population_std_of_finite_values_of_both_sides():
    hierarchy = Hierarchy([Factor("x", "max", 1.0, "std"), Factor("y", "max", 0.5)])
    za = np.array([[0.0, 0.0], [NAN, 0.0], [2.0, 0.0]])
    zb = np.array([[4.0, 0.0], [INF, 0.0], [2.0, 0.0]])
    expected_std = float(np.std([0.0, 2.0, 4.0, 2.0]))  # ddof=0, non-finite values dropped
    np.testing.assert_allclose(hierarchy.margins(za, zb), [expected_std, 0.5])
    # An explicit scale replaces the data's std; absolute levels ignore it.
    np.testing.assert_allclose(hierarchy.margins(za, zb, scale=[3.0, 7.0]), [3.0, 0.5])
    # gap 4 > std 1.41: decided; with scale 5 the same gap ties.
    assert hierarchy.compare(za[:1], zb[:1]).tolist() == [-1]
    assert hierarchy.compare(za[:1], zb[:1], scale=[5.0, 1.0]).tolist() == [0]


def test_std_margin_with_no_finite_value_is_zero():
    hierarchy = Hierarchy([Factor("x", "max", 2.0, "std")])
    za = np.array([[NAN], [INF]])
    np.testing.assert_array_equal(hierarchy.margins(za, za.copy()), [0.0])
    detail = hierarchy.compare_detailed(za, za.copy())
    assert detail.labels.tolist() == [0, 0] and detail.nonfinite.all()


def test_integer_and_float32_inputs():
    hierarchy = Hierarchy([Factor("x", "max", 1.0), Factor("y", "min", 0.5)])
    za = np.array([[3, 0], [1, 2], [1, 1]])
    zb = np.array([[1, 0], [1, 1], [2, 1]])
    assert hierarchy.compare(za, zb).tolist() == [1, -1, 0]
    assert hierarchy.compare(za.astype(np.float32), zb.astype(np.float32)).tolist() == [1, -1, 0]
    assert hierarchy.compare(za.tolist(), zb.tolist()).tolist() == [1, -1, 0]


@pytest.mark.parametrize("k", [1, 3, 8, 9])
def test_empty_batch(k):
    hierarchy = Hierarchy([Factor(f"f{i}", margin_mode="std", margin=1.0) for i in range(k)])
    detail = hierarchy.compare_detailed(np.zeros((0, k)), np.zeros((0, k)))
    assert detail.labels.shape == detail.levels.shape == detail.nonfinite.shape == (0,)
    assert detail.labels.dtype == np.int8 and detail.levels.dtype == np.int64
    assert hierarchy.compare(np.zeros((0, k)), np.zeros((0, k))).shape == (0,)
    np.testing.assert_array_equal(detail.level_shares(k), np.zeros(k + 1))


def _vectorised_reference(hierarchy, za, zb, margins):
    """Level-by-level reference with an 'undecided' mask (independent of the chunked implementation)."""
    n = len(za)
    labels = np.zeros(n, dtype=np.int64)
    levels = np.full(n, -1)
    nonfinite = np.zeros(n, dtype=bool)
    open_ = np.ones(n, dtype=bool)
    for lvl, factor in enumerate(hierarchy.factors):
        a, b = za[:, lvl], zb[:, lvl]
        bad = open_ & ~(np.isfinite(a) & np.isfinite(b))
        nonfinite |= bad
        open_ &= ~bad
        d = (a - b) * factor.sign
        for sign, hit in ((1, d > margins[lvl]), (-1, d < -margins[lvl])):
            hit &= open_
            labels[hit], levels[hit] = sign, lvl
            open_ &= ~hit
    return labels, levels, nonfinite


@pytest.mark.parametrize("extra_levels", [0, 7])
def test_large_batches_match_small_batches(extra_levels):
    rng = np.random.default_rng(extra_levels)
    n = 3 * _CHUNK + 1234
    assert n > 2 * _CHUNK  # the threaded path
    factors = [Factor("a", "max", 1.0), Factor("b", "min", 0.5, "std"), Factor("c", "max", 0.0)]
    factors += [Factor(f"x{i}", "min", 0.0) for i in range(extra_levels)]
    hierarchy = Hierarchy(factors)
    k = len(factors)
    za = rng.integers(-2, 3, size=(n, k)).astype(np.float64)
    zb = rng.integers(-2, 3, size=(n, k)).astype(np.float64)
    za[rng.random((n, k)) < 0.01] = NAN
    zb[rng.random((n, k)) < 0.005] = INF
    big = hierarchy.compare_detailed(za, zb)
    margins = hierarchy.margins(za, zb)
    finite_b = np.concatenate([za[:, 1], zb[:, 1]])
    finite_b = finite_b[np.isfinite(finite_b)]
    np.testing.assert_allclose(margins[:3], [1.0, 0.5 * finite_b.std(), 0.0], rtol=1e-9)
    # Small batches given the big batch's std as `scale` must reproduce it exactly.
    scale = np.ones(k)
    scale[1] = margins[1] / 0.5
    parts = [hierarchy.compare_detailed(za[s : s + 5000], zb[s : s + 5000], scale) for s in range(0, n, 5000)]
    np.testing.assert_array_equal(big.labels, np.concatenate([p.labels for p in parts]))
    np.testing.assert_array_equal(big.levels, np.concatenate([p.levels for p in parts]))
    np.testing.assert_array_equal(big.nonfinite, np.concatenate([p.nonfinite for p in parts]))
    labels, levels, nonfinite = _vectorised_reference(hierarchy, za, zb, margins)
    np.testing.assert_array_equal(big.labels, labels)
    np.testing.assert_array_equal(big.levels, levels)
    np.testing.assert_array_equal(big.nonfinite, nonfinite)
    assert {-1, 0, 1, 2} <= set(np.unique(big.levels).tolist()) and big.nonfinite.any()
    # float32 batches take the same path
    scale[1] = 2.0
    big32 = hierarchy.compare_detailed(za.astype(np.float32), zb.astype(np.float32), scale)
    small32 = hierarchy.compare_detailed(za[:1000].astype(np.float32), zb[:1000].astype(np.float32), scale)
    np.testing.assert_array_equal(big32.labels[:1000], small32.labels)
    np.testing.assert_array_equal(big32.levels[:1000], small32.levels)


# -- validation -----------------------------------------------------------------------------------------


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
    assert heron.ConfigError is ConfigError


def test_empty_hierarchy_is_rejected():
    with pytest.raises(ConfigError, match="hierarchy"):
        Hierarchy([])
    with pytest.raises(ConfigError, match="hierarchy"):
        Hierarchy(iter([]))


def test_duplicate_names_are_rejected():
    with pytest.raises(ConfigError, match="duplicate factor 'speed'"):
        Hierarchy(["speed", Factor("energy", "min"), Factor("speed", "min")])


def test_non_factor_entries_are_rejected():
    with pytest.raises(ConfigError, match="Factor"):
        Hierarchy([Factor("a"), 3])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("speed", "up"), "direction"),
        (("speed", "MAX"), "direction"),
        (("speed", "max", 0.1, "relative"), "margin_mode"),
        (("speed", "max", -0.1), "margin"),
        (("speed", "max", NAN), "margin"),
        (("speed", "max", INF), "margin"),
        (("speed", "min", -INF, "std"), "margin"),
        (("speed", "max", "wide"), "margin"),
    ],
)
def test_bad_factor_fields_are_rejected_by_name(args, field):
    with pytest.raises(ConfigError) as info:
        Factor(*args)
    message = str(info.value)
    assert "speed" in message and field in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["", None, 3])
def test_bad_factor_names_are_rejected(name):
    with pytest.raises(ConfigError, match="name"):
        Factor(name)  # type: ignore[arg-type]


def test_factor_positional_order_and_defaults():
    f = Factor("cost", "min", 0.25, "std")
    assert (f.name, f.direction, f.margin, f.margin_mode) == ("cost", "min", 0.25, "std")
    assert f.sign == -1.0
    g = Factor("speed")
    assert (g.direction, g.margin, g.margin_mode, g.sign) == ("max", 0.0, "absolute", 1.0)
    assert isinstance(Factor("x", "max", 1).margin, float)


def test_hierarchy_accessors():
    hierarchy = Hierarchy(["a", Factor("b", "min", 1.0)])
    assert hierarchy.names == ["a", "b"] and len(hierarchy) == 2
    np.testing.assert_array_equal(hierarchy.signs, [1.0, -1.0])
    hierarchy.signs[0] = 5.0  # a copy: the hierarchy is unchanged
    np.testing.assert_array_equal(hierarchy.signs, [1.0, -1.0])
    assert hierarchy == Hierarchy([Factor("a"), Factor("b", "min", 1.0)])
    assert hierarchy != Hierarchy([Factor("b", "min", 1.0), Factor("a")])
    assert hash(hierarchy) == hash(Hierarchy(["a", Factor("b", "min", 1.0)]))


def test_shape_errors_are_config_errors():
    hierarchy = Hierarchy(["a", "b"])
    with pytest.raises(ConfigError, match=r"\(N, 2\)"):
        hierarchy.compare(np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ConfigError):
        hierarchy.compare(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ConfigError):
        hierarchy.compare(np.zeros(2), np.zeros(2))
    std = Hierarchy([Factor("a", margin=1.0, margin_mode="std"), "b"])
    with pytest.raises(ConfigError, match="scale"):
        std.compare(np.zeros((3, 2)), np.zeros((3, 2)), scale=[1.0, 1.0, 1.0])


# -- level shares -----------------------------------------------------------------------------------------


def test_level_shares():
    comparison = Comparison(
        labels=np.array([1, -1, 1, 0, -1, 0], dtype=np.int8),
        levels=np.array([0, 0, 1, -1, 2, -1]),
        nonfinite=np.array([False, False, False, True, False, False]),
    )
    np.testing.assert_allclose(comparison.level_shares(3), [2 / 6, 1 / 6, 1 / 6, 2 / 6])
    np.testing.assert_allclose(comparison.level_shares(4), [2 / 6, 1 / 6, 1 / 6, 0.0, 2 / 6])


@settings(max_examples=100, deadline=None)
@given(cases())
def test_level_shares_count_the_deciding_levels(case):
    factors, za, zb, scale = case
    detail = Hierarchy(factors).compare_detailed(za, zb, scale)
    shares = detail.level_shares(len(factors))
    assert shares.shape == (len(factors) + 1,)
    n = len(za)
    for level in range(len(factors)):
        assert shares[level] * n == pytest.approx((detail.levels == level).sum())
    assert shares[-1] * n == pytest.approx((detail.labels == 0).sum())
    assert shares.sum() == pytest.approx(1.0 if n else 0.0)
