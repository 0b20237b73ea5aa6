"""The command line: outputs, every bad-input path, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from heron.cli import app

runner = CliRunner()
TINY = {
    "env": "heron/Pendulum-v1",
    "total_timesteps": 512,
    "algorithm_kwargs": {"n_steps": 256, "batch_size": 64},
    "reward_model": {"hidden": [32, 32]},
    "comparison": {"pairs": 256},
    "eval": {"episodes": 1},
}


def write(tmp_path: Path, data: object, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_envs_lists_factors_and_rankings() -> None:
    result = runner.invoke(app, ["envs", "--json"])
    assert result.exit_code == 0
    envs = {e["id"]: e for e in json.loads(result.stdout)}
    assert envs["heron/Pendulum-v1"]["factors"] == ["angle", "angular_velocity", "torque"]
    assert [f["name"] for f in envs["heron/MountainCarContinuous-v0"]["hierarchy"]] == ["goal", "energy"]
    table = runner.invoke(app, ["envs"])
    assert table.exit_code == 0 and "heron/Pendulum-v1" in table.stdout


def test_train_writes_run_directory(tmp_path: Path) -> None:
    config = write(tmp_path, TINY)
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", str(config), "--method", "flat-preference", "--seed", "3", "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.stderr
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["method"] == "flat-preference" and resolved["seed"] == 3
    assert [f["name"] for f in resolved["hierarchy"]] == ["angle", "angular_velocity", "torque"]
    for name in (
        "metrics.csv",
        "learning_curve.png",
        "policy.zip",
        "reward_model.safetensors",
        "checkpoints/state.json",
    ):
        assert (out / name).exists(), name
    assert "final ground-truth return" in result.stdout


BAD_CONFIGS = [
    ({**TINY, "hierarchy": [{"name": "height"}]}, "factor 'height' is not reported"),
    ({**TINY, "hierarchy": [{"name": "angle", "direction": "up"}]}, "hierarchy.0.direction"),
    ({**TINY, "hierarchy": [{"name": "angle", "margin_mode": "relative"}]}, "hierarchy.0.margin_mode"),
    ({**TINY, "hierarchy": [{"name": "angle", "margin": -0.5}]}, "hierarchy.0.margin"),
    ({**TINY, "hierarchy": [{"name": "angle"}, {"name": "angle"}]}, "duplicate factor 'angle'"),
    ({**TINY, "hierarchy": []}, "at least one factor"),
    ({**TINY, "env": "heron/NoSuchEnv-v0"}, "unknown environment"),
    ({**TINY, "algorithm": "rainbow"}, "unknown algorithm 'rainbow'"),
    ({**TINY, "method": "magic"}, "unknown method 'magic'"),
    ({**TINY, "total_timesteps": 0}, "total_timesteps"),
    ({**TINY, "total_timesteps": -5}, "total_timesteps"),
    ({**TINY, "colour": "blue"}, "colour: unknown setting"),
    ({**TINY, "reward_model": {"offset": "median"}}, "reward_model.offset"),
    ({**TINY, "reward_model": {"scale": 0}}, "reward_model.scale"),
    ({k: v for k, v in TINY.items() if k != "env"}, "env: required setting is missing"),
    ({**TINY, "env": "Pendulum-v1"}, "reports no info['factors']"),
    (
        {**TINY, "env": "heron_test/PendulumDropsTorque-v0", "hierarchy": [{"name": "torque"}]},
        "did not report factor 'torque'",
    ),
    ("env: [unclosed\n", "invalid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
]


@pytest.mark.parametrize(("config", "message"), BAD_CONFIGS)
def test_bad_config_exits_2_with_one_line(tmp_path: Path, config: object, message: str) -> None:
    path = write(tmp_path, config)
    result = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "missing.yaml"], "cannot read config"),
        (["train"], "missing CONFIG"),
        (["train", "--resume", "nowhere"], "no config.yaml"),
        (["train", "--total-timesteps", "0", "CONFIG"], "total_timesteps"),
    ],
)
def test_bad_command_line_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    args = [str(write(tmp_path, TINY)) if a == "CONFIG" else a for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_resume_after_kill(tmp_path: Path) -> None:
    """A run killed mid-way resumes from its last checkpoint and finishes its budget."""
    config = write(tmp_path, {**TINY, "total_timesteps": 6144, "eval": {"every": 512, "episodes": 1}})
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "heron", "train", str(config), "--out", str(out), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    state_file = out / "checkpoints" / "state.json"
    deadline = time.monotonic() + 120
    while not state_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads(state_file.read_text())
    assert not state["complete"] and state["num_timesteps"] < 6144
    result = runner.invoke(app, ["train", "--resume", str(out), "--no-progress"])
    assert result.exit_code == 0, result.stderr
    final = json.loads(state_file.read_text())
    assert final["complete"] and final["num_timesteps"] == 6144
    lines = (out / "metrics.csv").read_text().splitlines()[1:]
    steps = [int(line.split(",")[0]) for line in lines]
    assert steps == sorted(set(steps)) and steps[-1] == 6144


def test_demo_prints_table_and_writes_plot(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--total-timesteps", "2048", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.stderr
    for method in ("heron", "weighted-sum", "ground-truth"):
        assert method in result.stdout
        assert (out / method / "metrics.csv").exists()
    assert (out / "demo.png").stat().st_size > 0
    again = runner.invoke(app, ["demo", "--out", str(out), "--no-progress"])
    assert again.exit_code == 2 and "not empty" in again.stderr
