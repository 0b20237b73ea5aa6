"""Run directories: nothing in them runs code, checkpoints are consistent sets, saved models stand alone."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import heron
import tests.envs
from heron import checkpoints
from heron.config import validate
from heron.sb3.run import run_config

MARKER = Path("/tmp") / f"heron-payload-ran-{os.getpid()}"


class Payload:
    """Unpickling this runs a shell command that creates MARKER."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def _sac(out: Path) -> heron.TrainResult:
    return heron.train(
        "heron/Pendulum-v1",
        algorithm="sac",
        total_timesteps=600,
        seed=0,
        out=out,
        algorithm_kwargs={"learning_starts": 200, "buffer_size": 2000, "train_freq": 4, "gradient_steps": 1},
        comparison={"pairs": 128, "update_every": 200, "pool_steps": 600},
        reward_model={"hidden": [16]},
        eval={"every": 300, "episodes": 1},
    )


def _rewrite_checksums(ckpt: Path) -> None:
    """What an attacker who edits a file would also do: make every checksum match again."""
    state = json.loads((ckpt / "state.json").read_text())
    state["files"] = {name: hashlib.sha256((ckpt / name).read_bytes()).hexdigest() for name in state["files"]}
    text = json.dumps(state)
    (ckpt / "state.json").write_text(text)
    latest = ckpt.parent / "LATEST"
    pointer = json.loads(latest.read_text()) | {"state_sha256": hashlib.sha256(text.encode()).hexdigest()}
    latest.write_text(json.dumps(pointer))


def test_a_payload_in_every_file_never_runs(tmp_path: Path) -> None:
    """Each checkpoint file replaced by a pickle that would run code (checksums made to match): resume
    refuses with one line, and the payload never runs. SB3's policy.zip is never loaded at all."""
    original = tmp_path / "original"
    _sac(original)
    complete = checkpoints.latest(original)
    state = json.loads((complete.path / "state.json").read_text())
    state["complete"] = False  # unfinished, so that resume loads everything
    (complete.path / "state.json").write_text(json.dumps(state))
    config = (original / "config.yaml").read_text().replace("total_timesteps: 600", "total_timesteps: 900")
    (original / "config.yaml").write_text(config)
    _rewrite_checksums(complete.path)
    payload = pickle.dumps(Payload(), protocol=2)
    MARKER.unlink(missing_ok=True)
    for name in ("algorithm.pt", "loop.pt", "replay.npz"):
        run = tmp_path / name
        shutil.copytree(original, run)
        ckpt = checkpoints.latest(run).path
        if name.endswith(".npz"):
            with (ckpt / name).open("wb") as f:
                np.savez(f, observations=np.array([Payload()], dtype=object))
        else:
            (ckpt / name).write_bytes(payload)
        for zip_file in (run / "policy.zip", ckpt / "policy.zip"):
            zip_file.write_bytes(payload)
        _rewrite_checksums(ckpt)
        with pytest.raises(heron.ConfigError, match=rf"{name}: not a readable") as err:
            heron.resume(run)
        assert "\n" not in str(err.value)
        assert not MARKER.exists(), f"the payload in {name} ran"
    # The untouched copy (with a poisoned policy.zip beside it) resumes and trains on.
    (original / "policy.zip").write_bytes(payload)
    result = heron.resume(original)
    assert result.model.num_timesteps == 900 and not MARKER.exists()


def test_edited_or_damaged_checkpoints_end_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _sac(out)
    ckpt = checkpoints.latest(out).path
    with (ckpt / "loop.pt").open("r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 16)
    with pytest.raises(heron.ConfigError, match=r"loop\.pt does not match its checksum"):
        heron.resume(out)
    state = (ckpt / "state.json").read_text()
    (ckpt / "state.json").write_text(state.replace('"complete": true', '"complete": false'))
    with pytest.raises(heron.ConfigError, match=r"state\.json does not match its checksum"):
        heron.resume(out)
    pointer = json.loads((out / "checkpoints" / "LATEST").read_text())
    (out / "checkpoints" / "LATEST").write_text(json.dumps(pointer | {"name": "ckpt-999999"}))
    with pytest.raises(heron.ConfigError, match=r"state\.json is missing"):
        heron.resume(out)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path: Path, monkeypatch) -> None:
    """Killed mid-rollout, resumed from the last checkpoint: the same total steps and evaluation steps."""
    config = validate(
        {
            "env": "heron_test/PendulumCrashes-v0",
            "hierarchy": [{"name": "angle", "direction": "min"}, {"name": "torque", "direction": "min"}],
            "total_timesteps": 1000,
            "algorithm_kwargs": {"n_steps": 256, "batch_size": 64},
            "comparison": {"pairs": 128},
            "reward_model": {"hidden": [16]},
            "eval": {"every": 500, "episodes": 1},
            "checkpoint_every": 256,
        }
    )
    whole = run_config(config, out=tmp_path / "whole")
    monkeypatch.setattr(tests.envs, "CRASH_AFTER", 700)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_config(config, out=tmp_path / "killed")
    assert checkpoints.latest(tmp_path / "killed").state["num_timesteps"] == 512
    monkeypatch.setattr(tests.envs, "CRASH_AFTER", None)
    resumed = heron.resume(tmp_path / "killed")
    assert whole.model.num_timesteps == resumed.model.num_timesteps == 1024  # 1000 rounded up to whole rollouts
    assert [m["step"] for m in resumed.metrics] == [m["step"] for m in whole.metrics] == [500, 1000, 1024]


def test_saved_reward_model_scores_raw_inputs_in_a_fresh_process(tmp_path: Path) -> None:
    """reward_model.safetensors knows its inputs: a new process scores the run's own observations and
    actions with it and gets the rewards the agent was trained on."""
    out = tmp_path / "run"
    result = heron.train(
        "heron_test/ContextualBandit-v0",
        ["primary", "secondary"],
        total_timesteps=512,
        seed=0,
        out=out,
        algorithm_kwargs={"n_steps": 256, "batch_size": 64, "gamma": 0.0},
        reward_model={"hidden": [16]},
        eval={"episodes": 2},
    )
    buffer = result.model.rollout_buffer
    obs = buffer.observations.reshape(-1, 2).tolist()
    actions = buffer.actions.reshape(-1).astype(int).tolist()
    code = (
        "import json, sys, numpy as np, heron\n"
        "model = heron.RewardModel.load(sys.argv[1])\n"
        "obs, actions = json.loads(sys.stdin.read())\n"
        "print(json.dumps(model.reward(obs=np.array(obs, np.float32), action=np.array(actions)).tolist()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out / "reward_model.safetensors")],
        input=json.dumps([obs, actions]),
        capture_output=True,
        text=True,
        check=True,
    )
    np.testing.assert_allclose(json.loads(done.stdout), buffer.rewards.reshape(-1), rtol=1e-5, atol=1e-5)
