"""`heron compare`: the multi-seed runner, its summary and plots, resume, and the Ray backend."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import get_args

import pytest
import yaml
from typer.testing import CliRunner

from heron import ConfigError, checkpoints
from heron.cli import app
from heron.code.train import METHODS as CODE_METHODS
from heron.config import METHODS, config_kind
from heron.experiments.runner import compare, load_sweep, resolve_method
from heron.experiments.summary import mean_ci
from heron.lm.online import OnlineConfig
from tests.test_code_train import TINY_RUN

runner = CliRunner()
SWEEP = {
    "env": "heron/Pendulum-v1",
    "total_timesteps": 512,
    "algorithm_kwargs": {"n_steps": 256, "batch_size": 64},
    "reward_model": {"hidden": [16]},
    "comparison": {"pairs": 128},
    "eval": {"every": 256, "episodes": 1},
    "threshold": -2000,
    "variants": {
        "heron-margin": {
            "hierarchy": [
                {"name": "angle", "direction": "min", "margin": 0.5, "margin_mode": "std"},
                {"name": "torque", "direction": "min"},
            ]
        }
    },
}


def write_sweep(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**SWEEP, **changes}))
    return path


def test_mean_ci_matches_student_t() -> None:
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / 3**0.5)
    assert mean_ci([5.0])[0] == 5.0


def test_method_names_resolve() -> None:
    base = {k: v for k, v in SWEEP.items() if k not in ("threshold", "variants")}
    assert resolve_method(base, "heron-noise0.2", {})["comparison"]["teacher_noise"] == 0.2
    swapped = resolve_method(base, "heron-swap", {})["hierarchy"]
    assert [f["name"] for f in swapped] == ["angular_velocity", "angle", "torque"]
    variant = resolve_method(base, "heron-margin", SWEEP["variants"])
    assert variant["method"] == "heron" and variant["hierarchy"][0]["margin"] == 0.5
    assert variant["comparison"] == {"pairs": 128}
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        resolve_method(base, "magic", {})


def test_compare_writes_summary_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    methods = ["heron", "ground-truth", "heron-margin"]
    result = compare(write_sweep(tmp_path), methods, 2, out, workers=2, progress=False)
    assert [o.status for o in result.outcomes] == ["done"] * 6
    with (out / "summary.csv").open() as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(methods)
    for row in rows.values():
        assert row["seeds"] == "2"
        for column in (
            "final_return",
            "final_return_ci95",
            "auc",
            "steps_to_threshold",
            "wall_clock_s",
            "factor/angle",
            "factor/torque",
        ):
            assert row[column] != "", column
    summary = (out / "summary.md").read_text()
    assert "| heron-margin | 2 |" in summary and "±" in summary
    for plot in ("learning_curves.png", "diagnostics.png", "factor_curves.png"):
        assert (out / plot).stat().st_size > 0
    # A second call finds every run complete and skips it.
    again = compare(write_sweep(tmp_path), methods, 2, out, workers=2, progress=False)
    assert {o.status for o in again.outcomes} == {"skipped"}


def test_failed_runs_are_reported_not_raised(tmp_path: Path) -> None:
    config = write_sweep(tmp_path, algorithm_kwargs={"n_stepz": 3}, variants={})
    result = runner.invoke(
        app,
        [
            "compare",
            str(config),
            "--methods",
            "heron",
            "--seeds",
            "1",
            "--out",
            str(tmp_path / "o"),
            "--workers",
            "1",
            "--no-progress",
        ],
    )
    assert result.exit_code == 1
    assert "failed: heron seed 0: ConfigError: algorithm_kwargs" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "heron,heron"], "listed twice"),
        (["--methods", "magic"], "unknown method"),
        (["--backend", "spark"], "--backend"),
    ],
)
def test_compare_bad_input_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["compare", str(write_sweep(tmp_path)), *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.stderr


def test_killed_sweep_resumes(tmp_path: Path) -> None:
    """Kill the sweep mid-way: rerunning it keeps finished runs and resumes the others."""
    config = write_sweep(tmp_path, total_timesteps=4096, variants={})
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "heron",
            "compare",
            str(config),
            "--methods",
            "heron,ground-truth",
            "--seeds",
            "1",
            "--out",
            str(out),
            "--workers",
            "2",
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    runs = [out / "runs" / m / "seed0" for m in ("heron", "ground-truth")]
    deadline = time.monotonic() + 180
    while not all((r / "checkpoints" / "LATEST").exists() for r in runs) and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r: checkpoints.latest(r).state["num_timesteps"] for r in runs}
    assert any(not checkpoints.latest(r).state["complete"] for r in runs)
    result = compare(config, ["heron", "ground-truth"], 1, out, workers=2, progress=False)
    assert {o.status for o in result.outcomes} <= {"done", "skipped"}
    for run in runs:
        final = checkpoints.latest(run).state
        assert final["complete"] and final["num_timesteps"] >= before[run]
        steps = [int(line.split(",")[0]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
        assert steps == sorted(set(steps)) and steps[-1] == 4096


def test_compare_on_local_ray(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("ray")
    # Ray's socket paths must stay under 107 characters: pytest's tmp_path is too deep for them.
    ray_tmp = Path("/tmp") / f"heron-ray-{os.getpid()}"
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    out = tmp_path / "sweep"
    try:
        result = compare(
            write_sweep(tmp_path, variants={}), ["heron", "weighted-sum"], 1, out, backend="ray", progress=False
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert [o.status for o in result.outcomes] == ["done", "done"]
    assert (out / "summary.md").exists()


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_and_every_variant_validate(path: Path) -> None:
    """Every config in configs/ and each of its variants is a valid run, as `heron compare` reads it."""
    base, variants, *_ = load_sweep(path)
    kind = config_kind(base)
    if kind == "lm" and base.get("trainer") not in ("grpo", "rloo"):
        return  # offline reward-model and DPO configs run with heron lm train, not heron compare
    methods = {"control": METHODS, "code": CODE_METHODS, "lm": LM_METHODS}[kind]
    for name in (*methods, *variants):
        assert resolve_method(base, name, variants)["method"] in methods


LM_METHODS = get_args(OnlineConfig.model_fields["method"].annotation)


def test_compare_runs_code_configs_with_the_same_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A code-generation config goes through heron compare: its methods, a swapped ranking, Pass@k per method."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = tmp_path / "code.yaml"
    config.write_text(yaml.safe_dump(TINY_RUN))
    base, variants, *_ = load_sweep(config)
    swapped = resolve_method(base, "heron-swap", variants)["hierarchy"]
    assert [f["name"] for f in swapped[:2]] == ["pass_rate", "passed"]
    with pytest.raises(ConfigError, match="unknown method 'helpfulness' for a code config"):
        resolve_method(base, "helpfulness", variants)
    out = tmp_path / "sweep"
    result = compare(config, ["heron", "coderl"], 1, out, workers=1, progress=False)
    assert [o.status for o in result.outcomes] == ["done", "done"]
    for row in result.table:
        assert 0.0 <= float(row["eval/pass@1"]) <= 1.0  # type: ignore[arg-type]
        assert "factor/passed" in row
    assert "eval/pass@2" in (out / "summary.md").read_text()
    assert (out / "learning_curves.png").exists()
    again = compare(config, ["heron", "coderl"], 1, out, workers=1, progress=False)
    assert [o.status for o in again.outcomes] == ["skipped", "skipped"]


def test_offline_lm_configs_are_not_compared(tmp_path: Path) -> None:
    config = tmp_path / "lm.yaml"
    config.write_text(yaml.safe_dump({"ratings": "tests/data/helpsteer-synthetic.jsonl", "trainer": "reward"}))
    with pytest.raises(ConfigError, match="online language-model configs"):
        compare(config, ["heron"], 1, tmp_path / "sweep", workers=1, progress=False)
