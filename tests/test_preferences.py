"""Preferences: the experience pool's units, aggregation, pair sampling, teachers and noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heron import Factor, Hierarchy
from heron.preferences import (
    ExperiencePool,
    HierarchyTeacher,
    WeightedSumTeacher,
    aggregate,
    flip,
    sample_pairs,
)

# -- a pool filled with known steps, and a reference built from the full history ---------------------


def fill(capacity: int, dones: np.ndarray) -> ExperiencePool:
    """A pool whose rows record their own global step and env (dones: (T, E) bool)."""
    n_envs = dones.shape[1]
    pool = ExperiencePool(capacity, n_envs, {"step": 1, "env": 1, "factors": 2})
    for t, done in enumerate(dones):
        pool.add(
            done,
            step=np.full((n_envs, 1), t),
            env=np.arange(n_envs).reshape(n_envs, 1),
            factors=np.stack([np.full(n_envs, t), np.arange(n_envs)], axis=1),
        )
    return pool


def row(capacity: int, n_envs: int, t: int, e: int) -> int:
    return (t % capacity) * n_envs + e


def held(capacity: int, total: int) -> range:
    return range(max(0, total - capacity), total)


def reference_segments(capacity, dones, length):
    total, n_envs = dones.shape
    window = held(capacity, total)
    out = set()
    for e in range(n_envs):
        for t0 in window:
            if t0 + length - 1 >= total:
                break
            if not dones[t0 : t0 + length - 1, e].any():
                out.add(tuple(row(capacity, n_envs, t, e) for t in range(t0, t0 + length)))
    return out


def reference_episodes(capacity, dones):
    total, n_envs = dones.shape
    first_held = held(capacity, total).start
    episodes = []
    for e in range(n_envs):
        start = 0
        for t in range(total):
            if dones[t, e]:
                if start >= first_held:  # the whole episode is still in the pool
                    episodes.append([row(capacity, n_envs, s, e) for s in range(start, t + 1)])
                start = t + 1
    width = max((len(ep) for ep in episodes), default=1)
    return {tuple(ep + [-1] * (width - len(ep))) for ep in episodes}, width


pool_histories = st.tuples(
    st.integers(1, 12),  # capacity
    st.integers(1, 3),  # envs
    st.integers(0, 40),  # steps written
    st.sampled_from([0.0, 0.1, 0.3, 0.7]),  # done probability
    st.integers(0, 2**32 - 1),
)


def history(capacity, n_envs, steps, p_done, seed):
    dones = np.random.default_rng(seed).random((steps, n_envs)) < p_done
    return dones, fill(capacity, dones)


def decode(pool: ExperiencePool, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global step and env of each entry of a unit index (padding ignored by the caller)."""
    safe = np.maximum(index, 0)
    return pool.flat("step")[safe, 0].astype(int), pool.flat("env")[safe, 0].astype(int)


@settings(max_examples=150, deadline=None)
@given(pool_histories)
def test_transition_units_are_every_held_step_oldest_first(params):
    capacity, n_envs, steps, p_done, seed = params
    _, pool = history(capacity, n_envs, steps, p_done, seed)
    units = pool.units("transition")
    expected = [row(capacity, n_envs, t, e) for t in held(capacity, steps) for e in range(n_envs)]
    assert units.shape == (len(expected), 1)
    assert units[:, 0].tolist() == expected
    assert pool.size == min(steps, capacity)


@settings(max_examples=200, deadline=None)
@given(pool_histories, st.integers(1, 6))
def test_segment_units(params, length):
    capacity, n_envs, steps, p_done, seed = params
    dones, pool = history(capacity, n_envs, steps, p_done, seed)
    units = pool.units("segment", segment_length=length)
    assert units.ndim == 2 and units.shape[1] == length
    assert np.issubdtype(units.dtype, np.integer)
    rows = [tuple(u) for u in units.tolist()]
    assert len(rows) == len(set(rows))
    assert set(rows) == reference_segments(capacity, dones, length)
    t, e = decode(pool, units)
    # Consecutive steps of one env, never across the ring's write head ...
    assert (np.diff(t, axis=1) == 1).all()
    assert (e == e[:, :1]).all()
    # ... and no episode end before the last step.
    assert not dones[t[:, :-1], e[:, :-1]].any()


@settings(max_examples=200, deadline=None)
@given(pool_histories)
def test_episode_units(params):
    capacity, n_envs, steps, p_done, seed = params
    dones, pool = history(capacity, n_envs, steps, p_done, seed)
    units = pool.units("episode")
    expected, width = reference_episodes(capacity, dones)
    assert units.shape == (len(expected), width)
    rows = [tuple(u) for u in units.tolist()]
    assert len(rows) == len(set(rows))
    assert set(rows) == expected
    for unit in units:
        valid = unit[unit >= 0]
        assert (unit[len(valid) :] == -1).all()  # padding only at the end
        t, e = decode(pool, valid)
        assert (np.diff(t) == 1).all() and (e == e[0]).all()
        assert dones[t[-1], e[0]] and not dones[t[:-1], e[0]].any()
        assert t[0] == 0 or dones[t[0] - 1, e[0]]  # starts at an episode's first step


def test_episode_units_worked_example():
    # capacity 4, one env: steps 0..6, episodes end at 1 and 5. Held: steps 3..6.
    dones = np.array([[0], [1], [0], [0], [0], [1], [0]], dtype=bool)
    pool = fill(4, dones)
    # The episode of steps 2..5 began before step 3 (overwritten): no complete episode is held.
    assert pool.units("episode").shape[0] == 0
    pool.add(np.array([True]), step=np.array([[7]]), env=np.array([[0]]), factors=np.zeros((1, 2)))
    t, _ = decode(pool, pool.units("episode"))
    assert t.tolist() == [[6, 7]]


def test_pool_with_a_done_but_no_complete_episode_has_no_episode_units():
    # Held steps 2..4 of a single env; the done at step 3 closes an episode that began at step 0.
    dones = np.array([[0], [0], [0], [1], [0]], dtype=bool)
    pool = fill(3, dones)
    units = pool.units("episode")
    assert units.shape[0] == 0 and units.ndim == 2


def test_segment_worked_example_with_wrapped_ring():
    # capacity 5, two envs, 8 steps: held steps 3..7. Env 0 ends an episode at step 4, env 1 at 6.
    dones = np.zeros((8, 2), dtype=bool)
    dones[4, 0] = dones[6, 1] = True
    pool = fill(5, dones)
    t, e = decode(pool, pool.units("segment", segment_length=3))
    got = sorted(zip(e[:, 0].tolist(), t[:, 0].tolist(), strict=True))
    # A window may end on a done but not contain one earlier: env 0 keeps only 5..7 (3..5 and 4..6
    # hold its done before their end), env 1 keeps 3..5 and 4..6 (ends on its done) but not 5..7.
    assert got == [(0, 5), (1, 3), (1, 4)]
    assert pool.units("segment", segment_length=6).shape == (0, 6)


def test_recent_rows():
    dones = np.zeros((7, 2), dtype=bool)
    pool = fill(4, dones)
    t, e = decode(pool, pool.recent_rows(2))
    assert t.tolist() == [5, 5, 6, 6] and e.tolist() == [0, 1, 0, 1]
    assert decode(pool, pool.recent_rows(pool.size))[0].tolist() == [3, 3, 4, 4, 5, 5, 6, 6]
    assert pool.recent_rows(0).shape == (0,)


def test_add_accepts_flat_fields():
    pool = ExperiencePool(3, 2, {"obs": 1, "factors": 2})
    pool.add(np.array([False, True]), obs=np.array([1.0, 2.0]), factors=np.arange(4.0))
    np.testing.assert_array_equal(pool.flat("obs")[:2, 0], [1.0, 2.0])
    np.testing.assert_array_equal(pool.flat("factors")[:2], [[0.0, 1.0], [2.0, 3.0]])


@given(pool_histories, st.lists(st.integers(1, 15), min_size=1, max_size=6))
@settings(max_examples=60, deadline=None)
def test_extend_in_blocks_equals_adding_step_by_step(params, blocks):
    """A rollout appended at once leaves the pool exactly as appending its steps one by one."""
    capacity, n_envs, total, p, seed = params
    dones = np.random.default_rng(seed).random((total, n_envs)) < p
    expected = fill(capacity, dones)
    pool = ExperiencePool(capacity, n_envs, {"step": 1, "env": 1, "factors": 2})
    t = 0
    for size in blocks * (total + 1):
        if t >= total:
            break
        block = np.arange(t, min(t + size, total))
        pool.extend(
            dones[block],
            step=np.repeat(block[:, None, None], n_envs, axis=1),
            env=np.broadcast_to(np.arange(n_envs)[None, :, None], (len(block), n_envs, 1)),
            factors=np.stack(np.broadcast_arrays(block[:, None], np.arange(n_envs)[None, :]), axis=-1),
        )
        t = block[-1] + 1
    assert pool.count == expected.count
    for name in ("step", "env", "factors"):
        np.testing.assert_array_equal(
            pool.flat(name)[pool.recent_rows(pool.size)], expected.flat(name)[expected.recent_rows(expected.size)]
        )
    np.testing.assert_array_equal(pool.dones[pool.chronological()], expected.dones[expected.chronological()])
    np.testing.assert_array_equal(pool.starts[pool.chronological()], expected.starts[expected.chronological()])
    np.testing.assert_array_equal(pool.units("episode"), expected.units("episode"))


# -- aggregate ------------------------------------------------------------------------------------------


def reference_aggregate(values, index, how):
    out = []
    for unit in index:
        steps = [values[r] for r in unit if r >= 0]
        columns = list(zip(*steps, strict=True))
        if how == "sum":
            out.append([math.fsum(c) for c in columns])
        elif how == "mean":
            out.append([math.fsum(c) / len(c) for c in columns])
        elif how == "min":
            out.append([min(c) for c in columns])
        elif how == "max":
            out.append([max(c) for c in columns])
        else:
            out.append(list(steps[-1]))
    return np.array(out, dtype=np.float64).reshape(len(index), values.shape[1])


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 30),
    st.integers(1, 3),
    st.integers(0, 12),
    st.integers(1, 6),
    st.sampled_from(["sum", "mean", "min", "max", "last"]),
    st.integers(0, 2**32 - 1),
)
def test_aggregate_matches_reference(n_rows, k, n_units, width, how, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n_rows, k)) * 10
    lengths = rng.integers(1, width + 1, n_units)
    index = rng.integers(0, n_rows, (n_units, width))
    index[np.arange(width) >= lengths[:, None]] = -1
    result = aggregate(values, index, how)
    assert result.shape == (n_units, k)
    np.testing.assert_allclose(result, reference_aggregate(values, index, how), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("how", ["sum", "mean", "min", "max", "last"])
def test_aggregate_ignores_padding_targets(how):
    # Padding gathers a real row; whatever that row holds must not leak into the result.
    values = np.array([[np.nan, np.inf], [1.0, -2.0], [3.0, 4.0]])
    index = np.array([[1, 2, -1], [2, -1, -1], [1, 2, 1]])
    expected = reference_aggregate(values, index, how)
    result = aggregate(values, index, how)
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result, expected)


def test_aggregate_of_pool_units():
    dones = np.zeros((9, 2), dtype=bool)
    dones[[2, 5], 0] = True
    dones[6, 1] = True
    pool = fill(6, dones)
    index = pool.units("episode")
    z = aggregate(pool.flat("factors").astype(np.float64), index, "sum")
    # env 0 episode of steps 3..5 (4, 5 held? held = 3..8): steps 3+4+5 = 12; env 1 has none complete.
    assert z.tolist() == [[12.0, 0.0]]
    last = aggregate(pool.flat("factors").astype(np.float64), index, "last")
    assert last.tolist() == [[5.0, 0.0]]


# -- pairs, noise and teachers ---------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 60), st.integers(0, 400), st.integers(0, 2**32 - 1))
def test_sample_pairs_never_pairs_a_unit_with_itself(n_units, n_pairs, seed):
    pairs = sample_pairs(n_units, n_pairs, np.random.default_rng(seed))
    assert pairs.ndim == 2 and pairs.shape[1] == 2
    assert np.issubdtype(pairs.dtype, np.integer)
    if n_units < 2:
        assert len(pairs) == 0
        return
    assert len(pairs) == n_pairs
    assert ((pairs >= 0) & (pairs < n_units)).all()
    assert (pairs[:, 0] != pairs[:, 1]).all()


def test_sample_pairs_covers_every_ordered_pair_evenly():
    pairs = sample_pairs(4, 24_000, np.random.default_rng(0))
    counts = np.zeros((4, 4))
    np.add.at(counts, (pairs[:, 0], pairs[:, 1]), 1)
    off_diagonal = counts[~np.eye(4, dtype=bool)]
    assert np.diag(counts).sum() == 0
    assert off_diagonal.min() > 1700 and off_diagonal.max() < 2300  # 2000 each expected


def test_sample_pairs_is_reproducible():
    a = sample_pairs(10, 50, np.random.default_rng(7))
    b = sample_pairs(10, 50, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("probability", [0.05, 0.3, 0.5])
def test_flip_flips_about_the_requested_share(probability):
    rng = np.random.default_rng(1)
    labels = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=40_000)
    flipped = flip(labels, probability, rng)
    assert flipped.dtype == np.int8 and flipped.shape == labels.shape
    np.testing.assert_array_equal(flipped[labels == 0], 0)
    nonzero = labels != 0
    assert (np.abs(flipped[nonzero]) == 1).all()
    share = (flipped[nonzero] != labels[nonzero]).mean()
    assert abs(share - probability) < 0.015


def test_flip_extremes():
    rng = np.random.default_rng(0)
    labels = np.array([1, -1, 0, 1], dtype=np.int8)
    np.testing.assert_array_equal(flip(labels, 0.0, rng), labels)
    np.testing.assert_array_equal(flip(labels, 1.0, rng), -labels)
    assert flip(labels, 1.0, rng).dtype == np.int8
    np.testing.assert_array_equal(labels, [1, -1, 0, 1])  # the input is left alone


def test_weighted_sum_teacher():
    teacher = WeightedSumTeacher(np.array([1.0, -2.0]))
    za = np.array([[3.0, 1.0], [0.0, 1.0], [2.0, 1.0], [np.nan, 0.0], [1.0, np.inf]])
    zb = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    # weighted gaps: 3 - 2 = 1; -2; 2 - 2 = 0 (a tie: unlabeled); NaN; -inf
    result = teacher.label(za, zb, np.ones(2))
    assert result.labels.dtype == np.int8
    assert result.labels.tolist() == [1, -1, 0, 0, 0]
    assert result.levels.tolist() == [0, 0, -1, -1, -1]
    assert result.nonfinite.tolist() == [False, False, False, True, True]
    np.testing.assert_allclose(result.level_shares(2), [2 / 5, 0.0, 3 / 5])


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_weighted_sum_teacher_matches_the_sign_of_the_weighted_gap(n, seed):
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=3)
    za, zb = rng.integers(-3, 4, (n, 3)).astype(float), rng.integers(-3, 4, (n, 3)).astype(float)
    labels = WeightedSumTeacher(weights).label(za, zb, np.ones(3)).labels
    expected = [
        int(np.sign(sum(w * (a - b) for w, a, b in zip(weights, ra, rb, strict=True))))
        for ra, rb in zip(za, zb, strict=True)
    ]
    agree = labels == np.array(expected)
    # exact only away from rounding-level ties
    gaps = np.abs((za - zb) @ weights)
    assert agree[gaps > 1e-9].all()


def test_hierarchy_teacher_uses_the_given_scale():
    hierarchy = Hierarchy([Factor("a", "max", 1.0, "std"), Factor("b", "min")])
    teacher = HierarchyTeacher(hierarchy)
    za = np.array([[2.0, 1.0], [2.0, 0.0]])
    zb = np.array([[0.0, 0.0], [0.0, 1.0]])
    wide = teacher.label(za, zb, np.array([5.0, 1.0]))  # margin 5: level a ties, b decides
    assert wide.labels.tolist() == [-1, 1] and wide.levels.tolist() == [1, 1]
    narrow = teacher.label(za, zb, np.array([1.0, 1.0]))
    assert narrow.labels.tolist() == [1, 1] and narrow.levels.tolist() == [0, 0]


def test_grouped_pairs_share_units_within_each_block():
    rng = np.random.default_rng(3)
    pairs = sample_pairs(1000, 1000, rng, group=32, block=100)
    assert pairs.shape == (1000, 2)
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert ((pairs >= 0) & (pairs < 1000)).all()
    blocks = pairs.reshape(10, 100, 2)
    assert all(len(np.unique(b)) <= 32 for b in blocks)
    # Different blocks draw different groups.
    assert len(np.unique(pairs)) > 200
