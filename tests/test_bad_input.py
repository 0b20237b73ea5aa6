"""Every bad input ends as one clear line (a ConfigError; exit code 2 on the command line), and nothing
an env reports crashes training. One section per kind of fault in docs/reliability.md."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import heron
from heron import checkpoints
from heron.cli import app
from heron.config import read_yaml, validate
from heron.resources import check_memory
from heron.sb3.run import run_config
from tests.test_run_dir import _rewrite_checksums

runner = CliRunner()
TINY: dict[str, Any] = {
    "env": "heron/Pendulum-v1",
    "total_timesteps": 256,
    "algorithm_kwargs": {"n_steps": 128, "batch_size": 64},
    "reward_model": {"hidden": [16]},
    "comparison": {"pairs": 64},
    "eval": {"episodes": 1},
}


def _one_line(result: Any) -> str:
    assert result.exit_code == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


# -- 1. values that validated and failed minutes later -----------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"algorithm_kwargs": {"gamma": math.nan}}, r"algorithm_kwargs: gamma: must be a finite number"),
        ({"algorithm_kwargs": {"gamma": 1.5}}, r"algorithm_kwargs\.gamma: must be in \[0, 1\], got 1\.5"),
        ({"algorithm_kwargs": {"n_epochs": "ten"}}, r"algorithm_kwargs\.n_epochs: expected int, got 'ten'"),
        ({"algorithm_kwargs": {"n_epochs": True}}, r"algorithm_kwargs\.n_epochs: expected"),
        ({"algorithm_kwargs": {"policy_kwargs": {"net_arch": [1.5]}}}, r"algorithm_kwargs: ppo rejected them"),
        ({"algorithm_kwargs": {"policy_kwargs": {"x": [math.inf]}}}, r"policy_kwargs\.x\.0: must be a finite"),
        ({"algorithm_kwargs": {"policy_kwargs": {"net_arch": [10**6] * 3}}}, r"policy_kwargs: needs about"),
        ({"reward_model": {"hidden": [10**6, 10**6]}}, r"reward_model: needs about 14\.7 TiB of memory"),
        ({"reward_model": {"ensemble": 10**8}}, r"reward_model: needs about .* x ensemble 100000000"),
        ({"comparison": {"pairs": 2 * 10**9}}, r"comparison\.pairs: needs about"),
        ({"comparison": {"pool_steps": 10**12}}, r"comparison\.pool_steps: needs about"),
        ({"n_envs": 10**6}, r"n_envs: Input should be less than or equal to 4096"),
        ({"env_kwargs": {"foo": 1}}, r"env_kwargs: the env could not be made: TypeError"),
        ({"env_kwargs": {"g": math.nan}}, r"env_kwargs: g: must be a finite number"),
        ({"env_kwargs": {"max_episode_steps": 0}}, r"env_kwargs: the env could not be made: ValueError"),
    ],
)
def test_values_that_would_fail_in_training_are_refused_before_it(options: dict, match: str) -> None:
    with pytest.raises(heron.ConfigError, match=match) as err:
        heron.train("heron/Pendulum-v1", total_timesteps=100, **options)
    assert "\n" not in str(err.value)


def test_replay_buffer_larger_than_memory_is_refused() -> None:
    with pytest.raises(heron.ConfigError, match=r"algorithm_kwargs\.buffer_size: needs about .* replay buffer of"):
        heron.train("heron/Pendulum-v1", algorithm="sac", total_timesteps=100, algorithm_kwargs={"buffer_size": 10**12})


def test_memory_check_names_the_largest_part() -> None:
    parts = {"a": (600, "six hundred"), "b": (500, "five hundred")}
    check_memory(parts, available=1100)
    with pytest.raises(heron.ConfigError, match=r"^a: needs about 600 B of memory \(six hundred\); the run needs 1\.1"):
        check_memory(parts, available=1000)


def test_a_yaml_list_becomes_the_tuple_sb3_wants() -> None:
    result = heron.train(
        "heron/Pendulum-v1",
        algorithm="sac",
        total_timesteps=64,
        algorithm_kwargs={"train_freq": [1, "step"], "learning_starts": 32, "buffer_size": 128},
        comparison={"pairs": 32},
        reward_model={"hidden": [8]},
        eval={"episodes": 1},
    )
    assert result.model.train_freq.frequency == 1 and result.model.num_timesteps == 64


SETTINGS = {
    "total_timesteps": None,
    "seed": None,
    "n_envs": None,
    "algorithm": None,
    "method": None,
    "weights": None,
    "hierarchy": None,
    "checkpoint_every": None,
    "reward_model": ["hidden", "ensemble", "lr", "weight_decay", "scale", "epochs", "batch_size", "offset", "inputs"],
    "comparison": ["unit", "segment_length", "pairs", "units_per_batch", "pool_steps", "update_every", "teacher_noise"],
    "eval": ["every", "episodes"],
    "algorithm_kwargs": ["gamma", "n_epochs", "learning_rate", "clip_range", "ent_coef", "gae_lambda", "max_grad_norm"],
}
KEYS = [(k, None) for k, inner in SETTINGS.items() if inner is None] + [
    (k, i) for k, inner in SETTINGS.items() for i in inner or ()
]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2, 3, 64, 10**9, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-(10**7), 10**7), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_value_of_any_setting_validates_or_is_one_line(key: tuple[str, str | None], value: Any) -> None:
    """A random YAML value in a random setting: the run is refused with one ConfigError line, or it
    builds everything it will use (env, agent, reward model, memory) without another exception."""
    config = json.loads(json.dumps(TINY))
    section, inner = key
    if inner is None:
        config[section] = value
    else:
        config.setdefault(section, {})[inner] = value
    try:
        cfg = validate(config)
        from heron.sb3.run import _build

        run = _build(cfg, cfg.env, None, progress=False)
        run.swap.close()
        run.eval_env.close()
    except heron.ConfigError as err:
        assert "\n" not in str(err)


# -- 2. files and paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b"env: heron/Pendulum-v1\nseed: 1\nseed: 2\n", "invalid YAML at line 3: found the key 'seed' twice"),
        (b"env: heron/Pendulum-v1\nreward_model: {lr: 0.1, lr: 0.2}\n", "found the key 'lr' twice"),
        (
            b"env: heron/Pendulum-v1\nalgorithm_kwargs: &a {x: *a}\n",
            "invalid YAML at line 2: an alias refers to itself",
        ),
        (
            b"env: x\na: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + b"".join(
                f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n".encode() for p, n in zip("abcd", "bcde", strict=True)
            ),
            "its aliases expand to more than 100,000 values",
        ),
        (b"env: !!python/object/apply:os.system ['true']\n", "could not determine a constructor"),
        ("env: heron/Pendulum-v1\n".encode("utf-16"), "not UTF-8 text (byte 0xff at line 1)"),
        (b"env: heron/Pendulum-v1\n" + b"#" * (1 << 20), "larger than 1 MiB"),
    ],
)
def test_config_files_that_cannot_be_read_safely(tmp_path: Path, text: bytes, match: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(text)
    with pytest.raises(heron.ConfigError, match=match.replace("(", r"\(").replace(")", r"\)")):
        read_yaml(path)
    assert match in _one_line(runner.invoke(app, ["train", str(path), "--no-progress"]))


def test_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("base: &b {lr: 0.01, epochs: 3}\nreward_model: {<<: *b, lr: 0.02}\n")
    assert read_yaml(path)["reward_model"] == {"lr": 0.02, "epochs": 3}


@pytest.mark.parametrize(
    ("make_out", "message"),
    [
        (lambda tmp: _file(tmp / "f"), "is a file, not a directory"),
        (lambda tmp: _file(tmp / "f") / "run", "cannot write to"),
        (lambda tmp: Path("/proc/heron-run"), "cannot write to /proc/heron-run"),
        (lambda tmp: _leftover(tmp / "old"), "holds config.yaml of a run that stopped before its first checkpoint"),
    ],
    ids=["a file", "under a file", "unwritable", "killed before its first checkpoint"],
)
def test_out_directories_that_cannot_take_a_run(tmp_path: Path, make_out: Any, message: str) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = make_out(tmp_path)
    before = sorted(p.name for p in out.parent.iterdir()) if out.parent.is_dir() and tmp_path in out.parents else None
    line = _one_line(runner.invoke(app, ["train", str(config), "--out", str(out), "--no-progress"]))
    assert line.startswith("error: out: ") and str(out) in line and message in line
    if before is not None:
        assert sorted(p.name for p in out.parent.iterdir()) == before  # nothing written, nothing removed


def test_a_refused_config_leaves_no_run_directory(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY, "hierarchy": ["nope"]}))
    _one_line(runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "new" / "run"), "--no-progress"]))
    assert not (tmp_path / "new" / "run").exists()


def _file(path: Path) -> Path:
    path.write_text("a file\n")
    return path


def _leftover(path: Path) -> Path:
    path.mkdir()
    (path / "config.yaml").write_text("env: heron/Pendulum-v1\n")
    return path


# -- 3. damaged run directories on resume ----------------------------------------------------------------


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 256 steps whose config now asks for 384: resuming it loads every file and trains on."""
    out = tmp_path_factory.mktemp("unfinished") / "run"
    run_config(validate({**TINY, "checkpoint_every": 128}), out=out)
    config = yaml.safe_load((out / "config.yaml").read_text())
    config["total_timesteps"] = 384
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_to_any_file_of_a_run_directory(unfinished: Path, tmp_path: Path, data: st.DataObject) -> None:
    """Random bytes written into, a truncation of, or the deletion of any file of a run directory:
    resume either refuses with one ConfigError line or trains exactly to the total asked for."""
    run = Path(tempfile.mkdtemp(dir=tmp_path)) / "run"
    shutil.copytree(unfinished, run)
    name = data.draw(st.sampled_from(_files(run)), label="file")
    path = run / name
    content = path.read_bytes()
    damage = data.draw(st.sampled_from(["bytes", "truncate", "delete", "replace"]), label="damage")
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(content[: data.draw(st.integers(0, max(len(content) - 1, 0)))])
    elif damage == "replace":
        path.write_bytes(data.draw(st.binary(max_size=256)))
    else:
        at = data.draw(st.integers(0, max(len(content) - 1, 0)))
        noise = data.draw(st.binary(min_size=1, max_size=32))
        changed = content[:at] + noise + content[at + len(noise) :]
        if changed == content:
            return
        path.write_bytes(changed)
    try:
        result = heron.resume(run)
    except heron.ConfigError as err:
        assert "\n" not in str(err)
        return
    assert result.model.num_timesteps == 384  # never more steps than asked


def test_a_checkpoint_whose_counters_disagree_is_refused(unfinished: Path, tmp_path: Path) -> None:
    """A negative step count (checksums made to match, as an attacker would) never trains a million steps."""
    run = tmp_path / "run"
    shutil.copytree(unfinished, run)
    ckpt = checkpoints.latest(run)
    (ckpt.path / "state.json").write_text(json.dumps(dict(ckpt.state, num_timesteps=-1_000_000)))
    _rewrite_checksums(ckpt.path)
    with pytest.raises(heron.ConfigError, match="counters do not agree"):
        heron.resume(run)


# -- 5. non-finite factors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "inputs"),
    [("heron", ["obs", "factors"]), ("heron", ["obs", "action"]), ("weighted-sum", None), ("ground-truth", None)],
)
def test_non_finite_factors_are_counted_and_kept_out(method: str, inputs: list[str] | None) -> None:
    """NaN, inf and 1e39 (inf in float32) factors every 7th step: training runs, each such step is
    counted, and neither the agent's rewards nor the reward model's outputs are ever non-finite."""
    options: dict[str, Any] = {"reward_model": {"hidden": [16], **({"inputs": inputs} if inputs else {})}}
    result = heron.train(
        "heron_test/PendulumNonFinite-v0",
        ["angle", "angular_velocity", "torque"],
        method=method,
        total_timesteps=512,
        algorithm_kwargs={"n_steps": 256, "batch_size": 64},
        comparison={"pairs": 256},
        eval={"episodes": 1},
        **options,
    )
    assert result.metrics[-1]["nonfinite_steps"] == 512 // 7
    buffer = result.model.rollout_buffer
    assert np.isfinite(buffer.rewards).all() and np.isfinite(buffer.advantages).all()
    if result.loop is not None:
        assert result.metrics[-1]["nonfinite"] > 0  # pairs that reached a NaN level were left unlabeled
        assert result.loop.nonfinite_steps == 512 // 7
        assert np.isfinite(result.loop.recent_rewards(256)).all()
        assert math.isfinite(float(result.reward_model.out_shift)) and math.isfinite(float(result.reward_model.out_std))


def test_a_saved_model_scores_non_finite_factors_as_neutral() -> None:
    result = heron.train(
        "heron/Pendulum-v1",
        total_timesteps=256,
        algorithm_kwargs={"n_steps": 128, "batch_size": 64},
        reward_model={"hidden": [8], "inputs": ["factors"]},
        comparison={"pairs": 64},
        eval={"episodes": 1},
    )
    factors = np.array([[0.1, 0.2, 0.3], [np.nan, 0.2, 0.3], [np.inf, 0.0, 0.0], [1e39, 0.0, 0.0]])
    rewards = result.reward_model.reward(factors=factors)
    assert np.isfinite(rewards[0]) and (rewards[1:] == 0.0).all()


# -- 6. the command line and the library's own arguments --------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "CONFIG", "--seed", "abc"], "Invalid value for '--seed'"),
        (["train", "CONFIG", "--bogus-flag"], "No such option: --bogus-flag"),
        (["trian"], "No such command 'trian'"),
        (["compare", "CONFIG", "--seeds", "0"], "Invalid value for '--seeds'"),
        (["train", "CONFIG", "--seed"], "Option '--seed' requires an argument"),
        (["train", "CONFIG", "CONFIG"], "Got unexpected extra argument"),
    ],
)
def test_command_line_mistakes_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(TINY))
    line = _one_line(runner.invoke(app, [str(config) if a == "CONFIG" else a for a in args]))
    assert message in line and "--help" in line


def test_help_still_prints_and_exits_0() -> None:
    result = runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "Train one agent" in result.stdout


class Unpicklable(gym.Wrapper):
    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.handle = open(__file__)  # noqa: SIM115  (an object deepcopy cannot copy)


@pytest.mark.parametrize(
    ("env", "hierarchy", "match"),
    [
        ("heron/Pendulum-v1", [{"nme": "angle"}], r"hierarchy\.0: unknown key 'nme'"),
        ("heron/Pendulum-v1", "angle", "hierarchy: expected a list of factors, got str"),
        ("heron/Pendulum-v1", [3], r"hierarchy\.0: expected a Factor, a name or a mapping, got int"),
        (lambda: 3, ["angle"], "env: the env factory returned int, not a gymnasium.Env"),
        (lambda: Unpicklable(gym.make("heron/Pendulum-v1")), None, "cannot be copied"),
    ],
    ids=["factor key", "a string", "a number", "factory", "uncopyable"],
)
def test_library_arguments_raise_config_error(env: Any, hierarchy: Any, match: str) -> None:
    if match == "cannot be copied":
        env = env()
        hierarchy = ["angle"]
    with pytest.raises(heron.ConfigError, match=match):
        heron.train(env, hierarchy, total_timesteps=64)


def test_random_bytes_inside_a_saved_reward_model_are_refused(tmp_path: Path) -> None:
    """Bytes changed inside a tensor still load as numbers (and turn into NaN or garbage later): the
    checksum the file carries refuses them."""
    from heron.reward_model import RewardModel

    path = tmp_path / "reward.safetensors"
    RewardModel(4, (8,), 1, True, "mean", 1.0, None).save(path)
    RewardModel.load(path)
    data = bytearray(path.read_bytes())
    data[-20:-12] = b"\x7f\xc0\x00\x00\x7f\xc0\x00\x00"  # two NaNs' worth of bytes in the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(heron.ConfigError, match="do not match their checksum"):
        RewardModel.load(path)
