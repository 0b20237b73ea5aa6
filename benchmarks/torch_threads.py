"""Torch threads inside one `heron.train` run: one thread against torch's default, idle and under load.

    python benchmarks/torch_threads.py [--steps 20000] [--busy 2]

Trains heron (PPO, heron/Pendulum-v1, its tuned defaults) with ``heron.sb3.run.TORCH_THREADS`` set
to 1 and to torch's default (the machine's cores), first on an idle machine, then with ``--busy``
processes spinning on the CPU beside it (another run, a test suite: what a shared 2-core machine
sees). Methods alternate within each setting; the figure is the ratio measured in this one run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import torch

import heron
from heron.sb3 import run


def spin() -> None:
    while True:
        pass


def timed(steps: int, threads: int) -> float:
    run.TORCH_THREADS = threads
    start = time.perf_counter()
    heron.train("heron/Pendulum-v1", total_timesteps=steps, seed=0, eval={"every": steps, "episodes": 1})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--busy", type=int, default=2, help="spinning processes in the loaded setting")
    args = parser.parse_args()
    default = torch.get_num_threads()
    print(f"torch {torch.__version__}, default threads {default}, {args.steps} PPO steps on heron/Pendulum-v1")
    for busy in (0, args.busy):
        spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            seconds = {threads: timed(args.steps, threads) for threads in (1, default)}
        finally:
            for p in spinners:
                p.terminate()
        print(
            f"{busy} busy processes: 1 thread {seconds[1]:.1f} s, {default} threads {seconds[default]:.1f} s "
            f"({seconds[default] / seconds[1]:.2f}x the 1-thread time)"
        )


if __name__ == "__main__":
    main()
