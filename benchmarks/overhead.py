"""End-to-end wall-clock of `heron` over `ground-truth` at equal steps and seed.

    python benchmarks/overhead.py [--repeats 2] [--only CASE]

Each (case, method) pair is trained `repeats` times, alternating methods so that drifts in
machine load hit both; the fastest run of each is compared. Targets: PPO on heron/Pendulum-v1
(50k steps) at most 1.10x, SAC (10k steps) at most 1.15x, with the env's tuned defaults and ten
evaluations. Every other case trains with the settings of its ``configs/<case>.yaml`` (algorithm,
its hyperparameters, the reward model and comparison settings) on a shorter budget (MountainCar:
its whole 30k steps), with one evaluation at the end only (evaluations are not reward learning
and would dilute the difference): the robots and MountainCar at most 1.10x, as the results'
sweeps require, and the traffic networks (single: 10 one-hour episodes; 2x2 grid: 5 episodes, 4 lights) at most 1.10x.

``--breakdown`` also trains heron once more with its callback's reward-learning steps timed (pair
fits, relabeling, recording), and prints their seconds and share of that run: a figure that
machine-load drift, which moves whole runs by 10-30% here, hardly touches.

Two ratios are printed: the whole run, and training alone (``wall_clock_s`` of the final metrics
row: from the start of learning to the start of the final evaluation). They differ where the
methods' final policies differ in episode length: an Ant that stays up for 1,000 steps costs more
to evaluate than one that falls, which is not reward-learning overhead.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import heron
from heron.config import read_yaml
from heron.loop import HeronLoop
from heron.sb3 import run
from heron.sb3.buffers import OffPolicyAdapter, OnPolicyAdapter

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


CONFIG_KEYS = ("algorithm_kwargs", "reward_model", "comparison", "env_kwargs", "n_envs", "hierarchy", "weights")


@dataclass(frozen=True)
class Case:
    name: str
    env: str
    algorithm: str
    steps: int
    target: float
    options: dict[str, Any] = field(default_factory=dict)


def from_config(config: str, steps: int, target: float = 1.10, episodes: int = 1) -> Case:
    """The case ``configs/<config>.yaml`` describes, on ``steps`` steps, evaluated once at the end."""
    data = read_yaml(CONFIGS / f"{config}.yaml")
    options = {k: data[k] for k in CONFIG_KEYS if k in data}
    options["eval"] = {"every": steps, "episodes": episodes}
    return Case(config, data["env"], data["algorithm"], steps, target, options)


CASES = (
    Case("ppo", "heron/Pendulum-v1", "ppo", 50_000, 1.10),
    Case("sac", "heron/Pendulum-v1", "sac", 10_000, 1.15),
    from_config("hopper", 50_000, episodes=3),
    from_config("halfcheetah", 50_000, episodes=3),
    from_config("ant", 50_000, episodes=3),
    from_config("mountaincar", 30_000, episodes=3),  # its whole run: episode fits grow with the pool
    from_config("traffic-single", 7_200),
    from_config("traffic-grid2x2", 14_400),
)


def timed(case: Case, method: str, seed: int) -> tuple[float, float, float]:
    """Whole-run seconds, training seconds (up to the final evaluation) and the final return."""
    start = time.perf_counter()
    result = heron.train(
        case.env, algorithm=case.algorithm, method=method, total_timesteps=case.steps, seed=seed, **case.options
    )
    return time.perf_counter() - start, float(result.metrics[-1]["wall_clock_s"]), result.final_return


# heron's own work: the loop's refit, and what the SB3 adapters do each step and at each rollout end.
HERON_STEPS = (
    (HeronLoop, "refit"),
    (OnPolicyAdapter, "on_step"),
    (OnPolicyAdapter, "on_rollout_end"),
    (OnPolicyAdapter, "deliver"),
    (OffPolicyAdapter, "on_step"),
    (OffPolicyAdapter, "deliver"),
)


def _label(owner: type, name: str) -> str:
    return f"{'off-policy ' if owner is OffPolicyAdapter else ''}{name}"


@contextmanager
def timed_callback_steps() -> Iterator[Counter[str]]:
    """Seconds spent in each of heron's reward-learning steps while the block runs."""
    spent: Counter[str] = Counter()
    originals = {(owner, name): getattr(owner, name) for owner, name in HERON_STEPS}

    def timer(label: str, fn: Callable[..., object]) -> Callable[..., object]:
        def run(self: object, *args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - start

        return run

    for (owner, name), fn in originals.items():
        setattr(owner, name, timer(_label(owner, name), fn))
    try:
        yield spent
    finally:
        for (owner, name), fn in originals.items():
            setattr(owner, name, fn)


def breakdown(case: Case, seed: int) -> None:
    with timed_callback_steps() as spent:
        whole, _, _ = timed(case, "heron", seed)
    steps = ", ".join(f"{label} {seconds:.2f}" for label, seconds in spent.items() if seconds)
    total = sum(spent.values())
    print(f"{case.name}: heron's own steps {total:.1f} s of {whole:.1f} s ({total / whole:.1%}): {steps}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=[c.name for c in CASES], action="append", help="run these cases only")
    parser.add_argument("--breakdown", action="store_true", help="also time heron's own steps inside one run")
    parser.add_argument("--threads", type=int, help="torch threads inside each run (default: heron's own choice)")
    args = parser.parse_args()
    if args.threads:
        run.TORCH_THREADS = args.threads
    print(
        f"torch {torch.__version__}, {run.TORCH_THREADS} threads in training; repeats {args.repeats}, seed {args.seed}"
    )
    print(f"{'case':<16} {'steps':>6} {'method':<12} {'best s':>7} {'train s':>7} {'all runs s':<14} {'return':>8}")
    methods = ("ground-truth", "heron")
    for case in CASES:
        if args.only and case.name not in args.only:
            continue
        runs: dict[str, list[tuple[float, float, float]]] = {m: [] for m in methods}
        for _ in range(args.repeats):
            for method in methods:
                runs[method].append(timed(case, method, args.seed))
        best = {m: min(r[0] for r in runs[m]) for m in methods}
        train = {m: min(r[1] for r in runs[m]) for m in methods}
        for method in methods:
            every = ", ".join(f"{r[0]:.1f}" for r in runs[method])
            ret = np.mean([r[2] for r in runs[method]])
            print(
                f"{case.name:<16} {case.steps:>6} {method:<12} {best[method]:>7.1f} {train[method]:>7.1f} "
                f"{every:<14} {ret:>8.1f}"
            )
        for what, values in (("whole run", best), ("training", train)):
            ratio = values["heron"] / values["ground-truth"]
            verdict = "meets" if ratio <= case.target else "MISSES"
            print(f"{case.name}: heron / ground-truth, {what} = {ratio:.3f}x ({verdict} the {case.target:.2f}x target)")
        if args.breakdown:
            breakdown(case, args.seed)


if __name__ == "__main__":
    main()
