"""End-to-end wall-clock of `heron` over `ground-truth` at equal steps and seed.

    python benchmarks/overhead.py [--repeats 2]

Each (algorithm, method) pair is trained `repeats` times, alternating methods so that drifts in
machine load hit both; the fastest run of each is compared. Targets: PPO on heron/Pendulum-v1
(50k steps) at most 1.10x, SAC (10k steps) at most 1.15x.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import heron

CASES = (("ppo", 50_000, 1.10), ("sac", 10_000, 1.15))


def timed(algorithm: str, method: str, steps: int, seed: int) -> tuple[float, float]:
    start = time.perf_counter()
    result = heron.train("heron/Pendulum-v1", algorithm=algorithm, method=method, total_timesteps=steps, seed=seed)
    return time.perf_counter() - start, result.final_return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=[c[0] for c in CASES], help="run one algorithm's case")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; repeats {args.repeats}, seed {args.seed}")
    print(f"{'algorithm':<9} {'steps':>6} {'method':<12} {'best s':>8} {'all runs s':<22} {'return':>8}")
    for algorithm, steps, target in CASES:
        if args.only and algorithm != args.only:
            continue
        times: dict[str, list[float]] = {"ground-truth": [], "heron": []}
        returns: dict[str, list[float]] = {"ground-truth": [], "heron": []}
        for _ in range(args.repeats):
            for method in times:
                seconds, ret = timed(algorithm, method, steps, args.seed)
                times[method].append(seconds)
                returns[method].append(ret)
        for method, values in times.items():
            runs = ", ".join(f"{v:.1f}" for v in values)
            print(
                f"{algorithm:<9} {steps:>6} {method:<12} {min(values):>8.1f} {runs:<22} "
                f"{np.mean(returns[method]):>8.1f}"
            )
        ratio = min(times["heron"]) / min(times["ground-truth"])
        verdict = "meets" if ratio <= target else "MISSES"
        print(f"{algorithm}: heron / ground-truth wall-clock = {ratio:.3f}x ({verdict} the {target:.2f}x target)")


if __name__ == "__main__":
    main()
