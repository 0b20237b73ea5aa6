"""End-to-end wall-clock of `heron` over `ground-truth` at equal steps and seed.

    python benchmarks/overhead.py [--repeats 2] [--only CASE]

Each (case, method) pair is trained `repeats` times, alternating methods so that drifts in
machine load hit both; the fastest run of each is compared. Targets: PPO on heron/Pendulum-v1
(50k steps) at most 1.10x, SAC (10k steps) at most 1.15x; PPO on the single intersection (10
one-hour episodes) and on the 2x2 grid (5 episodes, 4 lights) at most 1.10x, with the
hyperparameters of ``configs/traffic-*.yaml`` and one evaluation episode at the end only (the
default, 10 evaluations of 5 one-hour episodes, would outweigh the training being measured).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import heron
from heron.config import read_yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def traffic_options(config: str, steps: int) -> dict[str, Any]:
    """The PPO settings of ``configs/<config>.yaml``, one evaluation episode at the end."""
    kwargs = read_yaml(CONFIGS / f"{config}.yaml")["algorithm_kwargs"]
    return {"algorithm_kwargs": kwargs, "eval": {"every": steps, "episodes": 1}}


@dataclass(frozen=True)
class Case:
    name: str
    env: str
    algorithm: str
    steps: int
    target: float
    options: dict[str, Any] = field(default_factory=dict)


CASES = (
    Case("ppo", "heron/Pendulum-v1", "ppo", 50_000, 1.10),
    Case("sac", "heron/Pendulum-v1", "sac", 10_000, 1.15),
    Case("traffic-single", "heron/TrafficSingle-v0", "ppo", 7_200, 1.10, traffic_options("traffic-single", 7_200)),
    Case("traffic-grid2x2", "heron/TrafficGrid2x2-v0", "ppo", 14_400, 1.10, traffic_options("traffic-grid2x2", 14_400)),
)


def timed(case: Case, method: str, seed: int) -> tuple[float, float]:
    start = time.perf_counter()
    result = heron.train(
        case.env, algorithm=case.algorithm, method=method, total_timesteps=case.steps, seed=seed, **case.options
    )
    return time.perf_counter() - start, result.final_return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=[c.name for c in CASES], action="append", help="run these cases only")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; repeats {args.repeats}, seed {args.seed}")
    print(f"{'case':<16} {'steps':>6} {'method':<12} {'best s':>8} {'all runs s':<22} {'return':>8}")
    for case in CASES:
        if args.only and case.name not in args.only:
            continue
        times: dict[str, list[float]] = {"ground-truth": [], "heron": []}
        returns: dict[str, list[float]] = {"ground-truth": [], "heron": []}
        for _ in range(args.repeats):
            for method in times:
                seconds, ret = timed(case, method, args.seed)
                times[method].append(seconds)
                returns[method].append(ret)
        for method, values in times.items():
            runs = ", ".join(f"{v:.1f}" for v in values)
            print(
                f"{case.name:<16} {case.steps:>6} {method:<12} {min(values):>8.1f} {runs:<22} "
                f"{np.mean(returns[method]):>8.1f}"
            )
        ratio = min(times["heron"]) / min(times["ground-truth"])
        verdict = "meets" if ratio <= case.target else "MISSES"
        print(f"{case.name}: heron / ground-truth wall-clock = {ratio:.3f}x ({verdict} the {case.target:.2f}x target)")


if __name__ == "__main__":
    main()
