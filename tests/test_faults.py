"""Faults survived: a run killed at any moment, inside a checkpoint write included, resumes to the
same total as an uninterrupted run, and loses at most the work since its last checkpoint."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from heron import checkpoints
from heron.config import validate
from heron.errors import ConfigError
from heron.sb3.run import run_config

ROOT = Path(__file__).parents[1]
CONFIG = {
    "env": "heron/Pendulum-v1",
    "total_timesteps": 2048,
    "algorithm_kwargs": {"n_steps": 256, "batch_size": 64},
    "reward_model": {"hidden": [32, 32]},
    "comparison": {"pairs": 256},
    "eval": {"every": 512, "episodes": 1},
    "checkpoint_every": 256,
}
# Runs heron's command line with checkpoints._sync wrapped so that the process kills itself
# (SIGKILL: no cleanup, no finally) at its Nth call. _sync runs after each file of a set is written,
# after the set's folder is complete, before and after the switch of LATEST.
KILLER = """
import os, signal, sys
from heron import checkpoints
from heron.cli import app
kill_at, calls, real = int(sys.argv[1]), [0], checkpoints._sync
def sync(path):
    calls[0] += 1
    if calls[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    real(path)
checkpoints._sync = sync
app(sys.argv[2:])
"""
SYNCS_PER_CHECKPOINT = 6  # algorithm.pt, loop.pt, state.json, the set's folder, LATEST, checkpoints/


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv's rows without the wall clock (the one column that differs between two runs)."""
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "wall_clock_s"} for row in csv.DictReader(f)]


def _latest_steps(run_dir: Path) -> int:
    """Steps of the newest checkpoint of a run that may be writing one right now (-1: none yet)."""
    try:
        found = checkpoints.latest(run_dir)
    except ConfigError:  # the set LATEST named was replaced between reading the pointer and the set
        return _latest_steps(run_dir)
    return -1 if found is None else int(found.state["num_timesteps"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    """The uninterrupted run's metrics."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_config(validate(CONFIG), out=out)
    return _metrics(out)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _heron(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heron", *args], env=_env(), capture_output=True, text=True, timeout=300
    )


def _train_killed_at(kill_at: int, tmp_path: Path) -> tuple[Path, Path]:
    """``heron train`` of CONFIG, killed at the ``kill_at``-th flush of a checkpoint write: (config, run dir)."""
    config, out = tmp_path / "run.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(CONFIG))
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(kill_at), "train", str(config), "--out", str(out), "--no-progress"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return config, out


def _check_resumed(run_dir: Path, reference: list[dict[str, str]], kept: int) -> None:
    """Resume to the end; the same total and evaluation steps as the reference, earlier rows untouched."""
    result = _heron("train", "--resume", str(run_dir), "--no-progress")
    assert result.returncode == 0, result.stderr
    final = checkpoints.latest(run_dir)
    assert final is not None and final.state["complete"]
    assert final.state["num_timesteps"] == CONFIG["total_timesteps"]  # never more than asked
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == [r["step"] for r in reference]
    # The evaluations recorded before the last checkpoint are the uninterrupted run's, to the digit.
    assert rows[:kept] == reference[:kept]


@pytest.mark.parametrize("kill_at", [8, 10, 11, 12])
def test_killed_inside_a_checkpoint_write(tmp_path: Path, reference: list[dict[str, str]], kill_at: int) -> None:
    """Killed while writing the second checkpoint set: with a data file written (8), with the set's
    folder complete but not yet renamed (10), with the new LATEST written but not switched (11), and
    just after the switch (12). Resume loads one consistent set, the previous one or the new one,
    and ends where the uninterrupted run ends."""
    _, out = _train_killed_at(kill_at, tmp_path)
    ckpt = checkpoints.latest(out)
    assert ckpt is not None
    # Before LATEST switches (the 5th sync of a set) the previous set is current; after, the new one.
    written = (kill_at - 1) // SYNCS_PER_CHECKPOINT + ((kill_at - 1) % SYNCS_PER_CHECKPOINT >= 5)
    assert ckpt.state["num_timesteps"] == 256 * written
    kept = sum(int(r["step"]) <= ckpt.state["num_timesteps"] for r in _metrics(out)) if written else 0
    _check_resumed(out, reference, kept)


def test_killed_inside_the_first_checkpoint_write(tmp_path: Path) -> None:
    """Before any set is complete there is nothing to resume: both ways on end in one line, and the
    directory is not silently reused."""
    config, out = _train_killed_at(3, tmp_path)
    resumed = _heron("train", "--resume", str(out), "--no-progress")
    assert resumed.returncode == 2 and resumed.stderr.strip() == f"error: resume: {out} has no checkpoint yet"
    again = _heron("train", str(config), "--out", str(out), "--no-progress")
    assert again.returncode == 2 and "stopped before its first checkpoint" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_killed_at_random_moments(tmp_path: Path, reference: list[dict[str, str]]) -> None:
    """Killed twice at random moments (drawn from a fixed seed), resumed each time: the run ends where
    the uninterrupted one does, and each resume kept every evaluation its checkpoint covered."""
    rng = random.Random(11)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "run"
    commands = [
        ["train", str(config), "--out", str(out), "--no-progress"],
        ["train", "--resume", str(out), "--no-progress"],
    ]
    snapshots: list[tuple[int, list[dict[str, str]]]] = []  # (rows the checkpoint covers, rows at the kill)
    for command in commands:
        start = _latest_steps(out)
        proc = subprocess.Popen(
            [sys.executable, "-m", "heron", *command], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and _latest_steps(out) <= start:
            time.sleep(0.02)  # wait for a new checkpoint
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        steps = _latest_steps(out)
        assert steps > max(start, 0)
        rows = _metrics(out)
        snapshots.append((sum(int(r["step"]) <= steps for r in rows), rows))
    # Until the first kill the run is the uninterrupted one; after each resume, every evaluation its
    # checkpoint covered is kept as it was.
    _check_resumed(out, reference, snapshots[0][0])
    final = _metrics(out)
    for kept, rows in snapshots:
        assert final[:kept] == rows[:kept]
