"""heron against a peer library: classic preference-based reward learning in ``imitation`` 1.0.1.

    python benchmarks/imitation_peer.py [--steps 50000] [--seeds 4] [--venv runs/imitation-venv] [--skip-install]

Prints one table: method, seeds, agent steps, env steps, mean wall-clock, mean final return, and
imitation's wall-clock over each method's. Per-run results go to ``runs/imitation-peer/results.json``
and imitation's training logs to ``runs/imitation-peer/imitation-seed<N>.log``.

Environment. imitation 1.0.1 pins gymnasium ~0.29 and stable-baselines3 ~2.2, heron needs gymnasium 1.x
and SB3 2.9, so imitation runs in its own venv (default ``runs/imitation-venv``, gitignored). Unless
``--skip-install`` is given the script creates it with ``python -m venv`` and installs, in this
order, ``torch==2.13.0`` (the CPU wheel this machine has on disk; an unpinned torch would pull a
multi-GB CUDA build) and then ``imitation==1.0.1 torch==2.13.0``, letting pip resolve imitation's
gymnasium/SB3 pins while torch stays pinned. If importing imitation then fails on ``pkg_resources``
it adds ``setuptools<81``. It refuses a venv holding any nvidia-*/cuda/triton package or a CUDA
torch. A venv that already imports imitation 1.0.1 and torch 2.13.0 is reused without calling pip.

imitation side (``benchmarks/_imitation_worker.py``, run by the venv's Python, one process per seed).
It follows imitation's documented quickstart for preference comparisons on Pendulum-v1
(docs/tutorials/5_train_preference_comparisons.ipynb):

* env: ``imitation.util.util.make_vec_env("Pendulum-v1", n_envs=1)`` (the tutorial uses the default
  8 envs; 1 here, as heron, so that PPO's n_steps means the same thing), ground-truth reward;
* reward net: ``BasicRewardNet`` with a ``RunningNorm`` input layer wrapped in ``NormalizedRewardNet``
  (``RunningNorm`` on the output), imitation's own default reward net for its preference-comparison
  script (the tutorial leaves the output unnormalized; heron normalizes its learned reward too);
* ``RandomFragmenter(warning_threshold=0)``, ``SyntheticGatherer`` (Boltzmann-rational labels from
  the true return of each fragment, its defaults), ``PreferenceModel``, ``BasicRewardTrainer`` with
  ``CrossEntropyRewardLoss`` and 3 epochs;
* agent: SB3 ``PPO("MlpPolicy")`` with heron's Pendulum defaults, read from heron's registry and
  passed to the worker (n_steps 2048, batch 64, lr 2e-3, gamma 0.97, gae_lambda 0.95, clip 0.1,
  ent 0.01, net 32-32; n_epochs is SB3's default 10 in both versions), wrapped by ``AgentTrainer``
  (exploration_frac 0.05), trained on the learned reward. These are the tutorial's PPO settings
  except that the tutorial's policy also normalizes observations (``FeedForward32Policy`` with a
  ``RunningNorm`` features extractor); here it is heron's plain 32-32 MlpPolicy;
* ``PreferenceComparisons``: 200 comparisons in total, fragment_length 100, transition_oversampling
  1, initial_comparison_frac 0.1, initial_epoch_multiplier 4, hyperbolic query schedule.

Budget. ``PreferenceComparisons.train`` runs ``num_iterations + 1`` rounds, each training the agent
for ``total_timesteps // num_iterations`` steps, which SB3 rounds up to whole 2048-step rollouts.
heron's ``train(total_timesteps=T)`` runs ceil(T / 2048) rollouts (51,200 agent steps for T = 50,000).
The script picks num_iterations (the one nearest 5, at most 10, whose round count divides heron's
rollout count)
and passes ``total_timesteps = num_iterations * rollouts_per_round * 2048``, so both agents take the
same number of PPO steps: for 50,000, 4 iterations (5 rounds of 5 rollouts) = 51,200 steps. When no
such split exists the nearest one is used and the "agent steps" column shows the difference.

Protocol differences, all reported rather than hidden:

* imitation's labels come from fragments of 100 steps; to have 2 x 200 fragments it samples extra
  env steps with the current policy (about 40,000 in total, beyond the agent's training steps,
  see "env steps"). heron labels units of the agent's own rollouts: no extra env steps, but many
  more (synthetic) comparisons, by its hierarchy (``heron``) or by the weighted sum of the factors
  (``flat-preference``), at heron's default comparison settings.
* wall-clock: imitation's is measured inside its worker from building the env to the end of its
  final 5-episode evaluation (interpreter start-up and imports excluded); heron's is measured around
  ``heron.train`` (imports excluded) with ``eval.every`` set to the budget, so that heron too
  evaluates once, at the end (5 deterministic episodes), and writes one checkpoint. Both sides
  import ``torch._dynamo`` before timing: torch otherwise imports it inside the first optimizer's
  constructor (about 1 s), which charged it to imitation and to heron's first run only.
* final return: both are the mean true Pendulum return of 5 deterministic episodes of the trained
  agent after training (heron: its last evaluation; imitation: the same loop on a fresh
  gymnasium 0.29 ``Pendulum-v1``, episodes seeded ``seed + 10000 + k``). The agent evaluated on the
  imitation side is the one trained inside the preference-comparison loop (the tutorial then trains a
  second agent from scratch on the frozen reward; that would double the budget and is not done).
* ``ground-truth`` is heron's PPO on the env reward, for reference (same PPO, no reward learning).
* ``heron-32x32`` is ``heron`` with imitation's reward-net width (``BasicRewardNet``'s default hidden
  sizes, 32-32) instead of heron's default 256-256: the same agent, budget and network size on both
  sides. ``heron`` is heron as a user gets it.

Runs are sequential and share the CPU. The order rotates with the seed (seed 0: imitation, heron,
heron-32x32, flat-preference, ground-truth; seed 1 starts with heron, and so on), so that drifts in
machine load do not always hit the same method.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch._dynamo  # torch imports it on the first optimizer (~1 s): an import, kept out of the timings

import heron
from heron.envs import REGISTRY

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().with_name("_imitation_worker.py")
OUT_DIR = ROOT / "runs" / "imitation-peer"
ENV_ID = "heron/Pendulum-v1"
N_STEPS = 2048  # heron's PPO n_steps for heron/Pendulum-v1, used on both sides
PREFERRED_ITERATIONS = 5  # imitation's default num_iterations
TORCH_PIN = "torch==2.13.0"
IMITATION_PIN = "imitation==1.0.1"
# Each heron row: its heron method and extra train() settings. heron-32x32: heron with imitation's
# reward-net width (BasicRewardNet's hid_sizes default, 32-32) instead of heron's default 256-256.
HERON_RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "heron": ("heron", {}),
    "heron-32x32": ("heron", {"reward_model": {"hidden": [32, 32]}}),
    "flat-preference": ("flat-preference", {}),
    "ground-truth": ("ground-truth", {}),
}

PROBE = """
import json
import torch, imitation, gymnasium, stable_baselines3, numpy
from imitation.algorithms import preference_comparisons  # noqa: F401
assert imitation.__version__ == "1.0.1", imitation.__version__
assert torch.__version__.split("+")[0] == "2.13.0", torch.__version__
assert torch.version.cuda is None, "CUDA build of torch: " + str(torch.version.cuda)
print(json.dumps({"torch": torch.__version__, "imitation": imitation.__version__,
                  "gymnasium": gymnasium.__version__, "stable_baselines3": stable_baselines3.__version__,
                  "numpy": numpy.__version__}))
"""


# -- the imitation venv ------------------------------------------------------------------------------
def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def clean_env() -> dict[str, str]:
    """The environment for the venv's processes: none of this interpreter's path settings."""
    env = dict(os.environ)
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(key, None)
    return env


def probe(python: Path) -> tuple[dict[str, str] | None, str]:
    """Versions in the venv if it imports imitation 1.0.1 on a CPU torch 2.13.0, else the error."""
    if not python.exists():
        return None, f"{python} does not exist"
    proc = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, env=clean_env())
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


def pip(python: Path, *args: str) -> None:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, env=clean_env())


def check_no_cuda(python: Path) -> None:
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout
    names = [p["name"].lower() for p in json.loads(out)]
    bad = [n for n in names if n.startswith("nvidia") or "cuda" in n or n == "triton"]
    if bad:
        raise SystemExit(f"the imitation venv holds CUDA packages {bad}; delete it and rerun")


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def setup_venv(venv: Path, skip_install: bool) -> dict[str, str]:
    python = venv_python(venv)
    versions, error = probe(python)
    if versions is None and skip_install:
        raise SystemExit(f"--skip-install: the venv at {venv} is not usable: {error}")
    if versions is None:
        if not python.exists():
            print(f"creating venv {venv}", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=clean_env())
        pip(python, TORCH_PIN)
        pip(python, IMITATION_PIN, TORCH_PIN)
        versions, error = probe(python)
        if versions is None and "pkg_resources" in error:
            pip(python, "setuptools<81", TORCH_PIN)
            versions, error = probe(python)
        if versions is None:
            raise SystemExit(f"the imitation venv at {venv} does not work after installing: {error}")
    check_no_cuda(python)
    size = dir_size(venv) / 2**30
    print(f"imitation venv {venv} ({size:.2f} GiB): " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    return versions


# -- runs --------------------------------------------------------------------------------------------
def imitation_schedule(steps: int) -> tuple[int, int]:
    """(num_iterations, rollouts per round) so imitation's agent takes as many PPO steps as heron's."""
    rollouts = max(1, math.ceil(steps / N_STEPS))
    exact = [r - 1 for r in range(2, min(rollouts, 2 * PREFERRED_ITERATIONS + 1) + 1) if rollouts % r == 0]
    if exact:
        iterations = min(exact, key=lambda i: (abs(i - PREFERRED_ITERATIONS), -i))
        return iterations, rollouts // (iterations + 1)
    iterations = max(1, min(PREFERRED_ITERATIONS, rollouts - 1))
    return iterations, max(1, round(rollouts / (iterations + 1)))


def ppo_defaults() -> dict[str, Any]:
    """heron's PPO defaults for heron/Pendulum-v1, handed to the imitation agent unchanged."""
    kwargs = dict(REGISTRY[ENV_ID].algorithm_defaults["ppo"])
    assert kwargs["n_steps"] == N_STEPS, kwargs
    return kwargs


def run_imitation(python: Path, steps: int, seed: int) -> dict[str, Any]:
    iterations, rollouts_per_round = imitation_schedule(steps)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    log = OUT_DIR / f"imitation-seed{seed}.log"
    with tempfile.TemporaryDirectory(prefix="imitation-peer-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            str(python),
            str(WORKER),
            f"--seed={seed}",
            f"--iterations={iterations}",
            f"--steps-per-iteration={rollouts_per_round * N_STEPS}",
            f"--ppo-kwargs={json.dumps(ppo_defaults())}",
            f"--out={out}",
        ]
        with log.open("w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=tmp, env=clean_env())
        if proc.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise SystemExit(f"imitation worker failed (exit {proc.returncode}); end of {log}:\n{tail}")
        return json.loads(out.read_text())


def run_heron(name: str, steps: int, seed: int) -> dict[str, Any]:
    method, options = HERON_RUNS[name]
    start = time.perf_counter()
    result = heron.train(
        ENV_ID,
        algorithm="ppo",
        method=method,
        total_timesteps=steps,
        seed=seed,
        eval={"every": steps, "episodes": 5},
        **options,
    )
    seconds = time.perf_counter() - start
    agent_steps = int(result.model.num_timesteps)
    return {
        "seed": seed,
        "wall_clock_s": seconds,
        "final_return": result.final_return,
        "agent_steps": agent_steps,
        "env_steps": agent_steps,
        "evaluations": len(result.metrics),
    }


# -- report ------------------------------------------------------------------------------------------
def mean(values: list[float]) -> float:
    return statistics.fmean(values)


def spread(values: list[float]) -> str:
    return f"{mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def print_table(runs: dict[str, list[dict[str, Any]]]) -> None:
    imitation_s = mean([r["wall_clock_s"] for r in runs["imitation"]])
    header = (
        f"{'method':<17} {'seeds':<8} {'agent steps':>11} {'env steps':>10} {'wall-clock s':>12} "
        f"{'final return':>16} {'imitation/this':>14}"
    )
    print(header)
    print("-" * len(header))
    for name, rows in runs.items():
        seeds = ",".join(str(r["seed"]) for r in rows)
        wall = mean([r["wall_clock_s"] for r in rows])
        print(
            f"{name:<17} {seeds:<8} {round(mean([r['agent_steps'] for r in rows])):>11,} "
            f"{round(mean([r['env_steps'] for r in rows])):>10,} {wall:>12.1f} "
            f"{spread([r['final_return'] for r in rows]):>16} {imitation_s / wall:>13.2f}x"
        )
    heron_s = mean([r["wall_clock_s"] for r in runs["heron"]])
    print(f"\nimitation / heron wall-clock = {imitation_s / heron_s:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50_000, help="heron's total_timesteps (agent env steps)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1")
    parser.add_argument("--venv", type=Path, default=ROOT / "runs" / "imitation-venv")
    parser.add_argument("--skip-install", action="store_true", help="use the venv as it is; never call pip")
    args = parser.parse_args()

    venv = args.venv if args.venv.is_absolute() else Path.cwd() / args.venv
    versions = setup_venv(venv, args.skip_install)
    iterations, rollouts_per_round = imitation_schedule(args.steps)
    print(
        f"heron side: heron {getattr(heron, '__version__', '?')}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {ENV_ID} PPO {args.steps:,} steps"
    )
    print(
        f"imitation side: imitation {versions['imitation']}, torch {versions['torch']}; Pendulum-v1 PPO, "
        f"{iterations} iterations ({iterations + 1} rounds x {rollouts_per_round} rollouts of {N_STEPS}), "
        "200 comparisons"
    )
    print(f"PPO on both sides (heron's defaults; n_epochs is SB3's default, 10): {ppo_defaults()}")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n", flush=True)

    runs: dict[str, list[dict[str, Any]]] = {"imitation": [], **{m: [] for m in HERON_RUNS}}
    names = list(runs)
    for seed in range(args.seeds):
        for name in names[seed % len(names) :] + names[: seed % len(names)]:  # each seed starts one later
            if name == "imitation":
                runs[name].append(run_imitation(venv_python(venv), args.steps, seed))
            else:
                runs[name].append(run_heron(name, args.steps, seed))
        for name, rows in runs.items():
            r = rows[-1]
            print(f"  seed {seed} {name:<16} {r['wall_clock_s']:7.1f} s  return {r['final_return']:8.1f}", flush=True)

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    results = {"steps": args.steps, "seeds": args.seeds, "imitation_versions": versions, "runs": runs}
    (OUT_DIR / "results.json").write_text(json.dumps(results, indent=1))
    print()
    print_table(runs)


if __name__ == "__main__":
    main()
