"""The command line: outputs, every bad-input path, and resume after a kill."""

from __future__ import annotations

import importlib.util
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

import heron.envs
from heron import checkpoints
from heron.cli import app

CONFIGS = Path(__file__).parents[1] / "configs"

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


def test_envs_marks_envs_whose_extra_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    mujoco = importlib.util.find_spec("mujoco") is not None
    envs = {e["id"]: e for e in json.loads(runner.invoke(app, ["envs", "--json"]).stdout)}
    assert envs["heron/Pendulum-v1"]["installed"] is True and envs["heron/Pendulum-v1"]["extra"] is None
    assert envs["heron/Hopper-v5"]["installed"] is mujoco and envs["heron/Hopper-v5"]["extra"] == "mujoco"

    monkeypatch.setattr(heron.envs, "_importable", lambda module: module != "mujoco")
    envs = {e["id"]: e for e in json.loads(runner.invoke(app, ["envs", "--json"]).stdout)}
    assert [i for i, e in envs.items() if not e["installed"]] == [
        "heron/HalfCheetah-v5",
        "heron/Hopper-v5",
        "heron/Ant-v5",
    ]
    table = runner.invoke(app, ["envs"])
    assert table.exit_code == 0
    rows = {line.split()[1]: line for line in table.stdout.splitlines() if line.startswith("│ heron/")}
    assert "needs heron-rl[mujoco]" in rows["heron/Hopper-v5"]
    assert "needs" not in rows["heron/Pendulum-v1"] and "yes" in rows["heron/Pendulum-v1"]
    assert "yes" in rows["heron/TrafficSingle-v0"]


@pytest.mark.parametrize(
    ("missing", "installed"),
    [((), True), (("libsumo",), True), (("libsumo", "traci"), False), (("sumo_rl",), False), (("sumo",), False)],
)
def test_traffic_extra_needs_a_sumo_client_sumo_rl_and_sumo(
    monkeypatch: pytest.MonkeyPatch, missing: tuple[str, ...], installed: bool
) -> None:
    monkeypatch.setattr(heron.envs, "_importable", lambda module: module not in missing)
    assert heron.envs.REGISTRY["heron/TrafficSingle-v0"].installed is installed
    assert heron.envs.REGISTRY["heron/Pendulum-v1"].installed


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
        "checkpoints/LATEST",
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
    ("env: [unclosed\n", "invalid YAML at line 2: expected ',' or ']', but got '<stream end>'"),
    ("env: [unclosed\n", "(while parsing a flow sequence at line 1)"),
    (
        "env: heron/Pendulum-v1\nseed: 1\nmethod: heron: x\n",
        "invalid YAML at line 3: mapping values are not allowed here",
    ),
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
        (["train", "--resume", "nowhere"], "resume: nowhere does not exist"),
        (["train", "--resume", "EMPTY"], "no config.yaml"),
        (["train", "--total-timesteps", "0", "CONFIG"], "error: --total-timesteps: "),
        (["train", "--method", "magic", "CONFIG"], "error: --method: unknown method 'magic' (choose from heron, "),
        (["train", "--method", "heron", "--seed", "1", "--total-timesteps", "-3", "CONFIG"], "--total-timesteps"),
    ],
)
def test_bad_command_line_exits_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    config = write(tmp_path, TINY)
    args = [{"CONFIG": str(config), "EMPTY": str(tmp_path / "empty")}.get(a, a) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert str(config) not in result.stderr  # command-line mistakes are not blamed on the file


def test_config_that_is_not_utf8_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(b"env: heron/Pendulum-v1\n# caf\xe9 in Latin-1\n")
    result = runner.invoke(app, ["train", str(path), "--no-progress"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {path}: not UTF-8 text (byte 0xe9 at line 2)"]


@pytest.mark.parametrize("name", ["hopper.yaml", "mountaincar.yaml"])
def test_train_takes_the_base_config_of_a_shipped_sweep_file(name: str) -> None:
    """Its `variants` are not settings of a run: train validates the base config (and here stops
    at the bad --total-timesteps, before anything trains)."""
    assert "variants" in yaml.safe_load((CONFIGS / name).read_text())
    result = runner.invoke(app, ["train", str(CONFIGS / name), "--total-timesteps", "0", "--no-progress"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["error: --total-timesteps: Input should be greater than 0"]
    assert "training the base config; `heron compare` runs its variants (" in " ".join(result.stdout.split())


def test_train_names_the_sweep_keys_it_leaves_to_compare(tmp_path: Path) -> None:
    path = write(tmp_path, {**TINY, "variants": {"wide": {"reward_model": {"hidden": [64]}}}, "threshold": -200})
    result = runner.invoke(app, ["train", str(path), "--method", "magic", "--no-progress"])
    assert result.exit_code == 2 and "error: --method: unknown method 'magic'" in result.stderr
    out = " ".join(result.stdout.split())
    assert "`heron compare` runs its variants (wide) and uses its threshold" in out
    bad = write(tmp_path, {**TINY, "variants": ["wide"]}, "bad.yaml")
    result = runner.invoke(app, ["train", str(bad), "--no-progress"])
    assert result.exit_code == 2 and f"{bad}: variants must map names to setting overrides" in result.stderr
    assert "variants: unknown setting" not in result.stderr


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
    pointer = out / "checkpoints" / "LATEST"
    deadline = time.monotonic() + 120
    while not pointer.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = checkpoints.latest(out).state
    assert not state["complete"] and state["num_timesteps"] < 6144
    result = runner.invoke(app, ["train", "--resume", str(out), "--no-progress"])
    assert result.exit_code == 0, result.stderr
    final = checkpoints.latest(out).state
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
    printed = " ".join(result.stdout.split())
    assert "heron's ranking: angle (0.1 std) > angular_velocity (0.1 std) > torque" in printed
    assert "pairs decided per level at the last refit: angle " in printed
    again = runner.invoke(app, ["demo", "--out", str(out), "--no-progress"])
    assert again.exit_code == 2 and "not empty" in again.stderr
