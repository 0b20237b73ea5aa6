"""Simulated seconds per wall-clock second of heron's traffic envs, libsumo against TraCI.

    python benchmarks/traffic_speed.py [--seconds 3600] [--repeats 3]

For each shipped network (heron/TrafficSingle-v0, heron/TrafficGrid2x2-v0, heron/TrafficCologne8-v0)
and each backend, one episode of ``--seconds`` simulated seconds is stepped through the env as
training steps it (5 s per step, every light given a seeded random green phase each step), after
a reset that is not timed. The figure includes everything a training step costs on the env side:
the request to the simulator process, SUMO's simulation, the per-light observations, rewards and
factors, and the reply. One warm-up episode, then the median of ``--repeats``; the ratio column is
libsumo over TraCI measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from importlib.metadata import version

import gymnasium as gym

import heron  # noqa: F401  (registers the envs)

NETWORKS = ("heron/TrafficSingle-v0", "heron/TrafficGrid2x2-v0", "heron/TrafficCologne8-v0")
BACKENDS = ("libsumo", "traci")


def timed_episodes(env: gym.Env, repeats: int) -> float:
    """Median seconds of ``repeats`` episodes with seeded random actions, after one warm-up episode.
    The reset before each episode is not timed."""
    times = []
    for i in range(repeats + 1):
        env.reset(seed=0)
        env.action_space.seed(i)
        start = time.perf_counter()
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(env.action_space.sample())
            if info.get("sim_restarted"):
                raise RuntimeError("the simulator restarted during the benchmark")
            done = terminated or truncated
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3600, help="simulated seconds per timed episode")
    parser.add_argument("--repeats", type=int, default=3, help="timed episodes per case (median reported)")
    args = parser.parse_args()

    versions = f"eclipse-sumo {version('eclipse-sumo')}, libsumo {version('libsumo')}"
    print(f"{versions}; {args.seconds} simulated s per episode, 5 s per step, median of {args.repeats}")
    print(f"{'network':<28} {'lights':>6} {'backend':<8} {'median s':>9} {'sim s / s':>10} {'libsumo / traci':>16}")
    for env_id in NETWORKS:
        rates = {}
        for backend in BACKENDS:
            env = gym.make(env_id, backend=backend, num_seconds=args.seconds)
            try:
                seconds = timed_episodes(env, args.repeats)
            finally:
                env.close()
            rates[backend] = args.seconds / seconds
            ratio = f"{rates['libsumo'] / rates['traci']:.1f}x" if backend == "traci" else ""
            lights = env.unwrapped.num_slots
            print(f"{env_id:<28} {lights:>6} {backend:<8} {seconds:>9.2f} {rates[backend]:>10,.0f} {ratio:>16}")


if __name__ == "__main__":
    main()
