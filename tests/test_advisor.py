"""The ranking advisor: its math against brute force, and `heron inspect` on real run directories."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from heron.advisor import advise, advise_pool, flag_line
from heron.cli import app
from heron.config import ComparisonConfig, load_sweep, to_hierarchy, validate
from heron.envs import REGISTRY
from heron.errors import ConfigError
from heron.hierarchy import Factor, Hierarchy
from heron.preferences import ExperiencePool, sample_pairs

runner = CliRunner()
ZERO_MARGINS = [
    {"name": "angle", "direction": "min"},
    {"name": "angular_velocity", "direction": "min"},
    {"name": "torque", "direction": "min"},
]
TINY = {
    "env": "heron/Pendulum-v1",
    "total_timesteps": 512,
    "hierarchy": ZERO_MARGINS,
    "algorithm_kwargs": {"n_steps": 256, "batch_size": 64},
    "reward_model": {"hidden": [16]},
    "comparison": {"pairs": 256},
    "eval": {"episodes": 1},
}
RANKING = Hierarchy([Factor("a", "max"), Factor("b", "min"), Factor("c", "max")])


def brute_margin(gaps: list[float], share: float) -> float:
    """The smallest m with |gap| <= m for at least `share` of the gaps, by sorting."""
    ordered = sorted(abs(g) for g in gaps)
    return ordered[math.ceil(share * len(ordered)) - 1]


@pytest.mark.parametrize("share", [0.5, 0.3, 0.8])
def test_continuous_first_factor_at_zero_margin_is_one_factor_in_disguise(share: float) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 3)) * [1.0, 2.0, 3.0]
    pairs = sample_pairs(len(z), 2000, rng)
    advice = advise(z, RANKING, pairs, share)
    top = advice.levels[0]
    assert top.decided == 1.0 and top.reached == 1.0 and advice.levels[1].reached == 0.0
    assert [f.kind for f in advice.flags] == ["disguise"]
    assert "decides 100.0% of pairs" in advice.flags[0].message
    # Level 1: the quantile of |gap| over all pairs; level 2: over the pairs level 1 then leaves.
    gap = (z[pairs[:, 0]] - z[pairs[:, 1]]) * RANKING.signs
    m0 = brute_margin(list(gap[:, 0]), share)
    assert top.suggested_margin == m0
    assert top.suggested_std == pytest.approx(m0 / z[:, 0].std())
    left = [row for row in gap if abs(row[0]) <= m0]
    m1 = brute_margin([row[1] for row in left], share)
    assert advice.levels[1].suggested_margin == m1
    assert advice.levels[2].suggested_margin is None
    # Applied together (as std margins), the suggestions give the shares they announce.
    suggested = advice.suggested_hierarchy(RANKING)
    shares = suggested.compare_detailed(z[pairs[:, 0]], z[pairs[:, 1]], z.std(axis=0)).level_shares(3)
    np.testing.assert_allclose(shares[:3], [lv.suggested_decided or 0.0 for lv in advice.levels], atol=2e-3)
    assert 1 - shares[0] >= share - 2e-3


def test_shares_match_a_per_pair_walk_down_the_tree() -> None:
    rng = np.random.default_rng(1)
    z = rng.integers(0, 3, size=(200, 3)).astype(float)
    z[5, 1] = np.nan
    ranking = Hierarchy([Factor("a", "max", 0.5, "std"), Factor("b", "min", 1.0), Factor("c", "max")])
    pairs = sample_pairs(len(z), 3000, rng)
    scale = np.nanstd(z, axis=0)
    advice = advise(z, ranking, pairs, scale=scale)
    margins = np.array([0.5 * scale[0], 1.0, 0.0])
    reached, decided = np.zeros(3), np.zeros(3)
    for i, j in pairs:
        for level in range(3):
            reached[level] += 1
            gap = ranking.signs[level] * (z[i, level] - z[j, level])
            if not abs(gap) <= margins[level]:
                decided[level] += np.isfinite(gap)
                break
    np.testing.assert_allclose([lv.reached for lv in advice.levels], reached / len(pairs))
    np.testing.assert_allclose([lv.decided for lv in advice.levels], decided / len(pairs))
    assert advice.unlabeled == pytest.approx(1 - decided.sum() / len(pairs))


def test_sparse_binary_top_factor_is_flagged() -> None:
    rng = np.random.default_rng(2)
    z = np.column_stack([rng.random(5000) < 0.01, rng.normal(size=5000), rng.normal(size=5000)]).astype(float)
    advice = advise(z, RANKING, sample_pairs(len(z), 4000, rng))
    assert advice.levels[0].decided < 0.05
    kinds = [f.kind for f in advice.flags]
    assert "sparse-top" in kinds and "disguise" not in kinds
    assert advice.levels[0].suggested_margin == 0.0  # most gaps are already 0: no margin needed


def test_a_lower_level_that_never_decides_is_silent() -> None:
    rng = np.random.default_rng(3)
    z = np.column_stack([rng.normal(size=300), np.zeros(300), rng.normal(size=300)])
    ranking = Hierarchy([Factor("a", "max", 1.0, "std"), Factor("b"), Factor("c")])
    advice = advise(z, ranking, sample_pairs(len(z), 2000, rng))
    assert [(f.kind, f.level) for f in advice.flags] == [("silent", 1)]
    assert advice.levels[1].reached > 0.3 and advice.levels[1].decided == 0.0


def test_bad_target_share_and_shape_are_config_errors() -> None:
    z = np.zeros((4, 3))
    pairs = np.array([[0, 1]])
    with pytest.raises(ConfigError, match="target share"):
        advise(z, RANKING, pairs, 1.0)
    with pytest.raises(ConfigError, match="shape"):
        advise(np.zeros((4, 2)), RANKING, pairs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """A tiny heron run at zero margins and a tiny ground-truth run (directory, train's output), trained once."""
    root = tmp_path_factory.mktemp("advisor")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = {}
    for method in ("heron", "ground-truth"):
        result = runner.invoke(
            app, ["train", str(config), "--method", method, "--out", str(root / method), "--no-progress"]
        )
        assert result.exit_code == 0, result.stderr
        out[method] = (root / method, result.stdout)
    return out


@pytest.fixture(scope="module")
def runs(trained: dict[str, tuple[Path, str]]) -> dict[str, Path]:
    """The run directories of :func:`trained`."""
    return {method: run_dir for method, (run_dir, _) in trained.items()}


def test_train_prints_the_advisors_flag(trained: dict[str, tuple[Path, str]]) -> None:
    heron_out = trained["heron"][1]
    assert "advisor: angle decides 100.0% of pairs" in heron_out and "heron inspect" in heron_out
    assert "advisor:" not in trained["ground-truth"][1]


def test_inspect_flags_the_zero_margin_ranking(runs: dict[str, Path]) -> None:
    result = runner.invoke(app, ["inspect", str(runs["heron"])])
    assert result.exit_code == 0, result.stderr
    for text in ("angular_velocity", "torque", "suggested margin", "one factor in disguise", "100.0%"):
        assert text in result.stdout
    data = json.loads(runner.invoke(app, ["inspect", str(runs["heron"]), "--json", "--target-share", "0.3"]).stdout)
    advice = data["advice"]
    assert data["method"] == "heron" and data["source"] == "pool" and advice["pairs"] == 256
    assert [f["kind"] for f in advice["flags"]] == ["disguise"]
    assert advice["levels"][0]["decided"] == 1.0 and advice["target_share"] == 0.3
    assert advice["levels"][0]["suggested_decided"] == pytest.approx(0.7, abs=0.01)
    assert advice["levels"][0]["suggested_std"] > 0


def test_inspect_falls_back_to_metrics_without_a_checkpoint(runs: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(runs["heron"], copy)
    shutil.rmtree(copy / "checkpoints")
    data = json.loads(runner.invoke(app, ["inspect", str(copy), "--json"]).stdout)
    assert data["source"] == "metrics.csv" and data["advice"]["pairs"] == 0
    assert [f["kind"] for f in data["advice"]["flags"]] == ["disguise"]
    assert data["advice"]["levels"][0]["suggested_margin"] is None


def test_inspect_reports_a_ground_truth_run_without_margins(runs: dict[str, Path]) -> None:
    result = runner.invoke(app, ["inspect", str(runs["ground-truth"])])
    assert result.exit_code == 0, result.stderr
    assert "return" in result.stdout and "margins need a heron run" in result.stdout
    data = json.loads(runner.invoke(app, ["inspect", str(runs["ground-truth"]), "--json"]).stdout)
    assert data["advice"] is None and data["evaluations"] >= 1


def test_missing_or_damaged_run_dir_is_one_line_exit_2(runs: dict[str, Path], tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(runs["heron"], damaged)
    (next((damaged / "checkpoints").glob("ckpt-*")) / "loop.pt").write_bytes(b"not a tensor file")
    empty = tmp_path / "empty"
    empty.mkdir()
    for where, message in [
        (tmp_path / "missing", "does not exist or is not a directory"),
        (empty, "holds no config.yaml"),
        (damaged, "does not match its checksum"),
    ]:
        result = runner.invoke(app, ["inspect", str(where)])
        assert result.exit_code == 2 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    bad_share = runner.invoke(app, ["inspect", str(runs["heron"]), "--target-share", "1"])
    assert bad_share.exit_code == 2 and "--target-share" in bad_share.stderr


def test_pendulum_ships_the_margins_the_advisor_chose_and_keeps_the_zero_margin_variant() -> None:
    base, variants, *_ = load_sweep(Path(__file__).parents[1] / "configs" / "pendulum.yaml")
    shipped = to_hierarchy(validate(base).hierarchy or ())
    assert shipped == REGISTRY["heron/Pendulum-v1"].hierarchy  # the demo trains on the registry's default
    assert [(f.margin, f.margin_mode) for f in shipped.factors] == [(0.1, "std"), (0.1, "std"), (0.0, "absolute")]
    assert variants["heron-zero-margin"]["hierarchy"] == ZERO_MARGINS


def test_a_sparse_goal_gets_the_share_other_units_would_give() -> None:
    # 40 episodes of 50 steps; half end at the goal (1 on their last step), energy every step.
    pool = ExperiencePool(2000, 1, {"factors": 2})
    rng = np.random.default_rng(4)
    for episode in range(40):
        goal = np.zeros(50)
        goal[-1] = episode % 2
        dones = np.zeros(50, dtype=bool)
        dones[-1] = True
        pool.extend(dones[:, None], factors=np.stack([goal, rng.random(50)], axis=1)[:, None])
    ranking = Hierarchy([Factor("goal", "max"), Factor("energy", "min", 1.0, "std")])
    advice = advise_pool(pool, ranking, ComparisonConfig(pairs=2000, segment_length=25))
    assert advice is not None and advice.unit == "transition"
    assert [f.kind for f in advice.flags] == ["sparse-top"] and advice.levels[0].decided < 0.05
    assert advice.unit_shares["episode"] == pytest.approx(0.5, abs=0.05)  # half the pairs differ on the goal
    assert advice.levels[0].decided < advice.unit_shares["segment"] < advice.unit_shares["episode"]
    line = flag_line(advice)
    assert line is not None and "a sparse top factor" in line and "episodes: " in line
