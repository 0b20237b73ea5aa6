"""Throw bad inputs and damaged run directories at ``heron train`` and count how each one ends.

The promise (docs/reliability.md): every malformed config, flag or damaged file ends with exit
code 2 and one line on stderr naming the problem, and a resumed run never trains more steps than
asked. Each case runs as its own ``python -m heron`` process, as a user would start it; a case
ends as promised when the process exits with 2 and prints exactly one line, no traceback.

    python benchmarks/faults.py [--workers 2] [--only KIND]

Prints one row per case and the share that ended as promised, per kind and overall.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

TINY = {
    "env": "heron/Pendulum-v1",
    "total_timesteps": 512,
    "algorithm_kwargs": {"n_steps": 256, "batch_size": 64},
    "reward_model": {"hidden": [32, 32]},
    "comparison": {"pairs": 256},
    "eval": {"episodes": 1},
}


@dataclass
class Case:
    kind: str
    name: str
    setup: Callable[[Path], list[str]]  # prepares files under a scratch folder, returns heron's arguments
    recovered: bool = False  # the promise is a finished run that lost nothing, not a refusal


def _config(overrides: dict | None = None, drop: tuple[str, ...] = ()) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        data = {**TINY, **(overrides or {})}
        for key in drop:
            data.pop(key)
        (tmp / "run.yaml").write_text(yaml.safe_dump(data))
        return ["train", str(tmp / "run.yaml"), "--out", str(tmp / "out"), "--no-progress"]

    return setup


def _nested(section: str, key: str, value: object) -> Callable[[Path], list[str]]:
    return _config({section: {**TINY.get(section, {}), key: value}})  # type: ignore[dict-item]


def _text(text: str | bytes) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        path = tmp / "run.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["train", str(path), "--out", str(tmp / "out"), "--no-progress"]

    return setup


def _out(prepare: Callable[[Path], Path]) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        _config()(tmp)
        return ["train", str(tmp / "run.yaml"), "--out", str(prepare(tmp)), "--no-progress"]

    return setup


def _file(path: Path) -> Path:
    path.write_text("a file\n")
    return path


def _argv(*args: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        _config()(tmp)
        return [a.replace("CONFIG", str(tmp / "run.yaml")) for a in args]

    return setup


_FINISHED: Path | None = None


def _finished_run() -> Path:
    """A finished tiny run (made once, copied for each damage)."""
    global _FINISHED
    if _FINISHED is None:
        root = Path(tempfile.mkdtemp(prefix="heron-faults-"))
        _config({"checkpoint_every": 256})(root)
        subprocess.run([sys.executable, "-m", "heron", *_config({"checkpoint_every": 256})(root)], check=True)
        _FINISHED = root / "out"
    return _FINISHED


def _damaged(damage: Callable[[Path, Path], None]) -> Callable[[Path], list[str]]:
    """A copy of a finished run, made unfinished again (total_timesteps raised), then damaged."""

    def setup(tmp: Path) -> list[str]:
        run = tmp / "run"
        shutil.copytree(_finished_run(), run)
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["total_timesteps"] = 1024
        (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        ckpt = run / "checkpoints" / yaml.safe_load((run / "checkpoints" / "LATEST").read_text())["name"]
        damage(run, ckpt)
        return ["train", "--resume", str(run), "--no-progress"]

    return setup


def _write(relative: str, content: bytes, in_ckpt: bool = True) -> Callable[[Path, Path], None]:
    def damage(run: Path, ckpt: Path) -> None:
        ((ckpt if in_ckpt else run) / relative).write_bytes(content)

    return damage


def _truncate(relative: str, in_ckpt: bool = True) -> Callable[[Path, Path], None]:
    def damage(run: Path, ckpt: Path) -> None:
        path = (ckpt if in_ckpt else run) / relative
        path.write_bytes(path.read_bytes()[: max(path.stat().st_size // 2, 1)])

    return damage


def _delete(relative: str, in_ckpt: bool = True) -> Callable[[Path, Path], None]:
    def damage(run: Path, ckpt: Path) -> None:
        ((ckpt if in_ckpt else run) / relative).unlink()

    return damage


def _flip_bytes(relative: str) -> Callable[[Path, Path], None]:
    def damage(run: Path, ckpt: Path) -> None:
        path = ckpt / relative
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(range(64))
        path.write_bytes(bytes(data))

    return damage


def _edit_config(key: str, value: object) -> Callable[[Path, Path], None]:
    def damage(run: Path, ckpt: Path) -> None:
        config = yaml.safe_load((run / "config.yaml").read_text())
        section, _, inner = key.partition(".")
        if inner:
            config[section][inner] = value
        else:
            config[section] = value
        (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    return damage


def _edit_state(key: str, value: object) -> Callable[[Path, Path], None]:
    def damage(run: Path, ckpt: Path) -> None:
        state = yaml.safe_load((ckpt / "state.json").read_text())
        state[key] = value
        import json

        (ckpt / "state.json").write_text(json.dumps(state))

    return damage


CASES = [
    # 1. values that validate and crash later
    Case("values", "reward_model.lr .inf", _text("env: heron/Pendulum-v1\nreward_model: {lr: .inf}\n")),
    Case("values", "reward_model.lr 1e10", _nested("reward_model", "lr", 1e10)),
    Case("values", "weight_decay .inf", _nested("reward_model", "weight_decay", float("inf"))),
    Case("values", "scale 1e300", _nested("reward_model", "scale", 1e300)),
    Case("values", "weight 1e300", _config({"weights": {"angle": 1e300}})),
    Case("values", "gamma .nan", _nested("algorithm_kwargs", "gamma", float("nan"))),
    Case("values", "gamma 1.5", _nested("algorithm_kwargs", "gamma", 1.5)),
    Case("values", "n_epochs ten", _nested("algorithm_kwargs", "n_epochs", "ten")),
    Case("values", "learning_rate -1", _nested("algorithm_kwargs", "learning_rate", -1.0)),
    Case("values", "batch_size 0", _nested("algorithm_kwargs", "batch_size", 0)),
    Case(
        "values", "policy_kwargs net_arch huge", _nested("algorithm_kwargs", "policy_kwargs", {"net_arch": [10**6] * 3})
    ),
    Case("values", "env_kwargs foo", _config({"env_kwargs": {"foo": 1}})),
    Case("values", "env_kwargs max_episode_steps 0", _config({"env_kwargs": {"max_episode_steps": 0}})),
    Case("values", "hidden [1e6, 1e6]", _nested("reward_model", "hidden", [10**6, 10**6])),
    Case("values", "hidden 1e6 float", _nested("reward_model", "hidden", [1e6, 1e6])),
    Case("values", "ensemble 1e8", _nested("reward_model", "ensemble", 10**8)),
    Case("values", "pairs 2e9", _nested("comparison", "pairs", 2 * 10**9)),
    Case("values", "pool_steps 1e12", _nested("comparison", "pool_steps", 10**12)),
    Case("values", "n_envs 1e6", _config({"n_envs": 10**6})),
    Case(
        "values", "buffer_size huge (sac)", _config({"algorithm": "sac", "algorithm_kwargs": {"buffer_size": 10**12}})
    ),
    Case("values", "seed -1", _config({"seed": -1})),
    Case("values", "seed 2**64", _config({"seed": 2**64})),
    Case("values", "total_timesteps true", _config({"total_timesteps": True})),
    Case("values", "net_arch [ten]", _nested("algorithm_kwargs", "policy_kwargs", {"net_arch": ["ten"]})),
    Case("values", "train_freq nonsense (sac)", _config({"algorithm": "sac", "algorithm_kwargs": {"train_freq": "x"}})),
    Case("values", "segment_length 0", _nested("comparison", "segment_length", 0)),
    Case("values", "margin -1", _config({"hierarchy": [{"name": "angle", "margin": -1}]})),
    Case("values", "margin .nan", _text("env: heron/Pendulum-v1\nhierarchy: [{name: angle, margin: .nan}]\n")),
    Case("values", "hierarchy empty", _config({"hierarchy": []})),
    Case("values", "hierarchy duplicate", _config({"hierarchy": ["angle", "angle"]})),
    Case("values", "env empty", _config({"env": ""})),
    Case("values", "env a number", _config({"env": 3})),
    # 2. files and paths
    Case("files", "binary config", _text(bytes(range(256)))),
    Case("files", "latin-1 config", _text("env: heron/Pendulum-v1\n# caf\xe9\n".encode("latin-1"))),
    Case("files", "utf-16 config", _text("env: heron/Pendulum-v1\n".encode("utf-16"))),
    Case("files", "empty config", _text("")),
    Case("files", "duplicate keys", _text("env: heron/Pendulum-v1\nseed: 1\nseed: 2\n")),
    Case("files", "duplicate nested keys", _text("env: heron/Pendulum-v1\nreward_model: {lr: 0.1, lr: 0.2}\n")),
    Case("files", "recursive alias", _text("env: heron/Pendulum-v1\nalgorithm_kwargs: {policy_kwargs: &a {x: *a}}\n")),
    Case(
        "files",
        "exploding aliases",
        _text(
            "env: heron/Pendulum-v1\nalgorithm_kwargs:\n  policy_kwargs:\n    a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"    {n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdefg", "bcdefgh", strict=True)
            )
        ),
    ),
    Case("files", "a python tag", _text("env: !!python/object/apply:os.system ['true']\n")),
    Case("files", "huge config file", _text("env: heron/Pendulum-v1\n" + "# pad\n" * 3_000_000)),
    Case("files", "config is a directory", lambda tmp: ["train", str(tmp), "--no-progress"]),
    Case("files", "--out is a file", _out(lambda tmp: _file(tmp / "file"))),
    Case("files", "--out under a file", _out(lambda tmp: _file(tmp / "file") / "run")),
    Case("files", "--out unwritable", _out(lambda tmp: Path("/proc/heron-run"))),
    Case(
        "files",
        "--out of a run killed before its first checkpoint",
        _out(
            lambda tmp: ((tmp / "old").mkdir(), (tmp / "old" / "config.yaml").write_text("env: x\n"))[0] or tmp / "old"
        ),
    ),
    Case(
        "files",
        "--out of a finished run",
        _out(lambda tmp: shutil.copytree(_finished_run(), tmp / "done")),
    ),
    # 3. damaged run directories on --resume
    Case("resume", "state.json truncated", _damaged(_truncate("state.json"))),
    Case("resume", "state.json empty", _damaged(_write("state.json", b""))),
    Case("resume", "state.json a list", _damaged(_write("state.json", b"[1, 2]"))),
    Case("resume", "state.json num_timesteps -5", _damaged(_edit_state("num_timesteps", -5))),
    Case("resume", "state.json num_timesteps a string", _damaged(_edit_state("num_timesteps", "many"))),
    Case("resume", "state.json counters null", _damaged(_edit_state("counters", None))),
    Case("resume", "state.json elapsed_s nan", _damaged(_edit_state("elapsed_s", float("nan")))),
    Case("resume", "state.json complete flipped", _damaged(_edit_state("complete", False))),
    Case("resume", "LATEST empty", _damaged(_write("checkpoints/LATEST", b"", in_ckpt=False))),
    Case("resume", "LATEST names nothing", _damaged(_write("checkpoints/LATEST", b'{"name": "ckpt-999999"}', False))),
    Case("resume", "LATEST traversal", _damaged(_write("checkpoints/LATEST", b'{"name": "../../etc"}', False))),
    Case("resume", "algorithm.pt missing", _damaged(_delete("algorithm.pt"))),
    Case("resume", "algorithm.pt truncated", _damaged(_truncate("algorithm.pt"))),
    Case("resume", "loop.pt truncated", _damaged(_truncate("loop.pt"))),
    Case("resume", "loop.pt random bytes", _damaged(_flip_bytes("loop.pt"))),
    Case("resume", "algorithm.pt random bytes", _damaged(_flip_bytes("algorithm.pt"))),
    # metrics.csv is an output: the checkpoint holds the evaluations, so resume writes it again.
    Case("resume", "metrics.csv deleted", _damaged(_delete("metrics.csv", in_ckpt=False)), recovered=True),
    Case(
        "resume",
        "metrics.csv not numbers",
        _damaged(_write("metrics.csv", b"step,x\nabc,def\n", in_ckpt=False)),
        recovered=True,
    ),
    Case(
        "resume",
        "metrics.csv binary",
        _damaged(_write("metrics.csv", bytes(range(256)), in_ckpt=False)),
        recovered=True,
    ),
    Case("resume", "config.yaml method edited", _damaged(_edit_config("method", "weighted-sum"))),
    Case("resume", "config.yaml hidden edited", _damaged(_edit_config("reward_model.hidden", [64, 64]))),
    Case("resume", "config.yaml algorithm edited", _damaged(_edit_config("algorithm", "a2c"))),
    Case("resume", "config.yaml deleted", _damaged(_delete("config.yaml", in_ckpt=False))),
    Case("resume", "config.yaml binary", _damaged(_write("config.yaml", bytes(range(256)), in_ckpt=False))),
    Case("resume", "checkpoints deleted", _damaged(lambda run, ckpt: shutil.rmtree(run / "checkpoints"))),
    # 6. errors of the command line itself
    Case("cli", "--seed abc", _argv("train", "CONFIG", "--seed", "abc")),
    Case("cli", "--bogus-flag", _argv("train", "CONFIG", "--bogus-flag")),
    Case("cli", "unknown command", _argv("trian", "CONFIG")),
    Case("cli", "compare --seeds 0", _argv("compare", "CONFIG", "--seeds", "0")),
    Case("cli", "compare --workers -1", _argv("compare", "CONFIG", "--workers", "-1")),
    Case("cli", "demo --total-timesteps 0", _argv("demo", "--total-timesteps", "0")),
    Case("cli", "--total-timesteps 1.5", _argv("train", "CONFIG", "--total-timesteps", "1.5")),
    Case("cli", "missing option value", _argv("train", "CONFIG", "--seed")),
    Case("cli", "extra argument", _argv("train", "CONFIG", "CONFIG")),
]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


MEMORY_LIMIT = 8 << 30


def run_case(case: Case, timeout: float) -> tuple[Case, str, str]:
    tmp = Path(tempfile.mkdtemp(prefix="heron-fault-"))
    try:
        args = case.setup(tmp)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "heron", *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=tmp,
                preexec_fn=_limit_memory,  # a case that allocates without bound fails alone
            )
        except subprocess.TimeoutExpired:
            return case, "hung", f"still running after {timeout:.0f} s"
        lines = proc.stderr.strip().splitlines()
        if "Traceback" in proc.stderr:
            return case, "traceback", lines[-1] if lines else ""
        if case.recovered:
            rows = (tmp / "run" / "metrics.csv").read_text().splitlines() if proc.returncode == 0 else []
            steps = [line.split(",")[0] for line in rows[1:]]
            numbers = [int(x) for x in steps if x.isdigit()]
            ordered = len(numbers) == len(steps) > 1 and numbers == sorted(set(numbers))
            if proc.returncode == 0 and ordered and numbers[0] < 512 and numbers[-1] == 1024:
                return case, "ok", f"resumed; metrics.csv rewritten, {len(steps)} evaluations up to 1024"
            return case, "not recovered", f"exit {proc.returncode}, evaluations {steps}"
        if proc.returncode == 0:
            return case, "accepted", "exit code 0"
        if proc.returncode == 2 and len(lines) == 1:
            return case, "ok", lines[0]
        return case, f"exit {proc.returncode}, {len(lines)} lines", " | ".join(lines)[:160]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", action="append", help="run only this kind (values, files, resume, cli)")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    cases = [c for c in CASES if not args.only or c.kind in args.only]
    if any(c.kind in ("resume", "files") for c in cases):
        _finished_run()
    with ThreadPoolExecutor(args.workers) as pool:
        results = list(pool.map(lambda c: run_case(c, args.timeout), cases))
    kinds: dict[str, list[bool]] = {}
    for case, outcome, detail in results:
        kinds.setdefault(case.kind, []).append(outcome == "ok")
        print(f"{case.kind:7} {'ok ' if outcome == 'ok' else 'BAD'} {case.name:45} {outcome:12} {detail[:150]}")
    for kind, oks in kinds.items():
        print(f"{kind}: {sum(oks)}/{len(oks)} as promised")
    total = [ok for oks in kinds.values() for ok in oks]
    print(f"all: {sum(total)}/{len(total)} as promised ({100 * sum(total) / len(total):.0f}%)")


if __name__ == "__main__":
    main()
