"""Run untrusted programs against tests in a sandbox, on a pool of warm workers.

Untrusted code never runs in the heron process. :class:`Sandbox` starts ``workers`` worker
processes once, each inside bubblewrap (or ``unshare`` where bubblewrap is not installed) with its
own network, PID, IPC, UTS and mount namespaces, and each as its own unprivileged uid. A worker
(:mod:`heron.code._worker`) forks one child per program, so a program costs a fork, not a new
interpreter. Jobs and results cross the boundary as JSON lines over pipes; nothing is pickled.
``docs/sandbox.md`` lists what is isolated and what is not.

Statuses and factors (every factor is 0.0 or 1.0 except ``pass_rate``):

=================================  ========  ====  ========================  ======
status                             compiles  runs  pass_rate                 passed
=================================  ========  ====  ========================  ======
``compile_error``                  0         0     0                         0
``runtime_error`` (did not run)    1         0     0                         0
``timeout``                        1         0     0                         0
``runtime_error`` (a test raised)  1         1     passed tests / tests run  0
``failed``                         1         1     passed tests / tests run  0
``passed``                         1         1     1                         1
=================================  ========  ====  ========================  ======

The status is CodeRL's class (compile error < runtime error < failed tests < passed): a program
is a ``runtime_error`` when its top level raised, its entry point is missing, its process died
before reporting (a signal, a memory limit hit outside Python, ``os._exit``), or any test raised an
exception other than AssertionError. The factors are finer: ``runs`` is 1 when the top level ran
and the tests started, and ``pass_rate`` is then the share of tests that passed, so a program that
raises on one edge case still ranks above one that raises on all. A timeout counts as not running:
nothing of a program that did not finish is scored.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import select
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from heron.errors import ConfigError

STATUSES = ("compile_error", "runtime_error", "timeout", "failed", "passed")
ISOLATIONS = ("auto", "bwrap", "unshare")
_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")
_MARKER = "--heron-sandbox-worker"  # names a worker's process in /proc/PID/cmdline
_UID_BASE = 1_500_000_000  # per-worker uids when heron runs as root: nothing else owns them
_uid_counter = itertools.count()
_REPLY_LIMIT = 1 << 20  # bytes; a worker reply is far smaller
_DEPTH = 2  # jobs queued per worker
_GRACE_S = 5.0  # how long past a job's timeout the host waits before it kills the worker itself
_START_S = 30.0
# The worker's dynamic linker resolves every symbol at start, not on first call: otherwise each forked
# child writes, so copies, the pages of the symbol tables the worker had not yet used.
_BIND_NOW = ("LD_BIND_NOW", "1")


class SandboxUnavailable(ConfigError):
    """Neither bubblewrap nor ``unshare`` can isolate programs on this machine."""


@dataclass(frozen=True)
class Outcome:
    """What running one program against its tests gave.

    :param status: one of ``compile_error``, ``runtime_error``, ``timeout``, ``failed``, ``passed``.
    :param factors: ``compiles``, ``runs``, ``pass_rate`` and ``passed``, floats in [0, 1].
    :param tests_passed: tests (asserts) that passed.
    :param tests_run: tests (asserts) that ran.
    :param detail: the first failure or error, one line, at most 300 characters ("" when passed).
    :param seconds: wall-clock seconds inside the sandbox worker, fork to cleanup.
    """

    status: str
    factors: dict[str, float] = field(repr=False)
    tests_passed: int = 0
    tests_run: int = 0
    detail: str = ""
    seconds: float = 0.0


def _outcome(status: str, passed: int = 0, run: int = 0, detail: str = "", seconds: float = 0.0) -> Outcome:
    if status not in STATUSES:
        status, detail = "runtime_error", f"unknown status {status!r}"
    ran = status in ("failed", "passed") or (status == "runtime_error" and run > 0)
    rate = 1.0 if status == "passed" else (passed / run if ran and run else 0.0)
    factors = {
        "compiles": float(status != "compile_error"),
        "runs": float(ran),
        "pass_rate": float(rate),
        "passed": float(status == "passed"),
    }
    return Outcome(status, factors, passed if ran else 0, run if ran else 0, detail, seconds)


_DIED = _outcome("runtime_error", detail="the sandbox worker died during the program")


def _visible_processes(uid: int) -> int:
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                count += os.stat(f"/proc/{name}").st_uid == uid
    return count


class _Worker:
    """One warm worker process inside its sandbox, and the host's end of its pipes."""

    def __init__(self, isolation: str, *, max_processes: int, tmpfs_mb: int) -> None:
        uid = _UID_BASE + (os.getpid() % 100_000) * 1000 + next(_uid_counter) % 1000 if os.getuid() == 0 else 0
        # RLIMIT_NPROC counts every process of the uid: a per-worker uid when root, else the user's.
        nproc = max_processes + 2 if uid else _visible_processes(os.getuid()) + max_processes + 2
        python = os.path.realpath(sys.executable)
        try:  # the source goes on the command line: the worker's file may lie where the sandbox hides (/tmp)
            with open(_WORKER, encoding="utf-8") as f:
                source = f.read()
        except OSError as err:
            raise SandboxUnavailable(f"the {isolation} sandbox did not start: {_WORKER}: {err.strerror}") from None
        worker = [python, "-I", "-S", "-c", source, _MARKER, f"--nproc={nproc}", f"--uid={uid}"]
        worker += [f"--path={path}" for path in _site_packages()]
        if isolation == "bwrap":
            command = _bwrap_command(python, tmpfs_mb) + worker
        else:
            command = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--ipc", "--uts"]
            if os.getuid() != 0:
                command += ["--user", "--map-root-user"]
            command += [*worker, f"--private-mounts={tmpfs_mb}", "--loopback-up"]
            command += [f"--expose={ancestor}:{prefix}" for ancestor, prefix in _exposes(python)]
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in kill())
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", _BIND_NOW[0]: _BIND_NOW[1]},
            start_new_session=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin: IO[bytes] = self.process.stdin
        self.fd = self.process.stdout.fileno()
        self.buffer = b""
        self.isolation = isolation
        self.uid = -1  # the uid the worker and its programs run as, once ready
        self.pid = 0  # the worker's host pid, once ready

    def wait_ready(self) -> _Worker:
        """Wait for the worker's first line; raise :class:`SandboxUnavailable` if it does not come."""
        ready = self.read_reply(time.monotonic() + _START_S)
        if ready is None or not ready.get("ready"):
            self._stderr.seek(0)
            message = self._stderr.read().decode(errors="replace").strip().splitlines()
            self.kill()
            reason = message[-1] if message else "no reply from the worker"
            raise SandboxUnavailable(f"the {self.isolation} sandbox did not start: {reason}")
        self.uid = int(ready.get("uid", -1))
        self.pid = self._worker_pid()
        return self

    def _worker_pid(self) -> int:
        """The worker's host pid: the child of the bwrap / unshare process (0 if not found)."""
        for name in os.listdir("/proc"):
            if name.isdigit():
                with contextlib.suppress(OSError), open(f"/proc/{name}/status") as status:
                    if f"\nPPid:\t{self.process.pid}\n" in status.read():
                        return int(name)
        return 0

    def _is_alive(self) -> bool:
        """Whether ``self.pid`` is still this worker (and not a reused pid)."""
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as cmdline:
                return _MARKER.encode() in cmdline.read()
        except OSError:
            return False

    def send(self, job: dict[str, Any]) -> None:
        self.stdin.write(json.dumps(job).encode() + b"\n")
        self.stdin.flush()

    def poll_replies(self) -> list[dict[str, Any]] | None:
        """Read what is available: the complete replies in it, or None when the worker is gone."""
        data = os.read(self.fd, 1 << 16)
        if not data:
            return None
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        if len(self.buffer) > _REPLY_LIMIT:
            return None
        replies = []
        for line in lines:
            try:
                reply = json.loads(line)
            except ValueError:
                return None
            if not isinstance(reply, dict):
                return None
            replies.append(reply)
        return replies

    def read_reply(self, deadline: float) -> dict[str, Any] | None:
        """Block until one reply; None when the worker ends or the deadline passes first."""
        while (remaining := deadline - time.monotonic()) > 0:
            if select.select([self.fd], [], [], remaining)[0]:
                replies = self.poll_replies()
                if replies is None:
                    return None
                if replies:
                    return replies[0]
        return None

    def kill(self) -> None:
        """Stop the worker and its sandbox. The worker is pid 1 of its namespace, which outlives
        bwrap's ``--die-with-parent``, so it is killed by its host pid too (which kills the whole
        namespace); an idle worker also leaves on the end of its input."""
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self.pid and self._is_alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(2.0)  # bwrap / unshare reap the worker and leave
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._stderr.close()


def _site_packages() -> list[str]:
    """The site-packages directories of the worker's Python (the base installation: the worker runs
    it by its real path), which it adds to ``sys.path`` itself: it starts without ``site``."""
    return [path for path in site.getsitepackages([sys.base_prefix, sys.base_exec_prefix]) if os.path.isdir(path)]


def _exposes(python: str) -> list[tuple[str, str]]:
    """(ancestor, path) for the Python installation and this package's directory where they lie
    under a directory others cannot enter (``/root``): the sandbox hides the ancestor and shows only
    them."""
    paths = (sys.base_prefix, sys.prefix, os.path.dirname(os.path.dirname(python)), os.path.dirname(_WORKER))
    prefixes = {os.path.realpath(p) for p in paths}
    prefixes = {p for p in prefixes if not any(p.startswith(q + os.sep) for q in prefixes)}  # outermost
    pairs = []
    for prefix in sorted(prefixes):
        parts = prefix.split(os.sep)
        for i in range(2, len(parts)):
            ancestor = os.sep.join(parts[:i])
            if not os.stat(ancestor).st_mode & 0o001:
                pairs.append((ancestor, prefix))
                break
    return pairs


def _bwrap_command(python: str, tmpfs_mb: int) -> list[str]:
    """bubblewrap arguments: a read-only view of ``/``, private ``/tmp``, ``/dev`` and ``/proc``.

    A directory others cannot enter (``/root`` with a Python installed under it) is replaced by an
    empty tmpfs into which only the Python installation is bound back, read-only.
    """
    # As root there is no user namespace: the worker starts as root with only CAP_SETUID and
    # CAP_SETGID, switches to its own uid (a real uid, so RLIMIT_NPROC binds) and loses them
    # before any job. Otherwise bubblewrap maps the worker to nobody in a new user namespace.
    root = os.getuid() == 0
    unshare = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    command = ["bwrap", *(unshare if root else ["--unshare-all"])]
    command += ["--as-pid-1", "--die-with-parent", "--new-session", "--clearenv", "--ro-bind", "/", "/"]
    hidden: set[str] = set()
    for ancestor, prefix in _exposes(python):
        if ancestor not in hidden:
            command += ["--tmpfs", ancestor]
            hidden.add(ancestor)
        parts = prefix.split(os.sep)
        for j in range(len(ancestor.split(os.sep)) + 1, len(parts)):  # else bwrap creates them 0700
            command += ["--perms", "0755", "--dir", os.sep.join(parts[:j])]
        command += ["--ro-bind", prefix, prefix]
    command += ["--perms", "1777", "--size", str(tmpfs_mb << 20), "--tmpfs", "/tmp", "--dev", "/dev", "--proc", "/proc"]
    command += ["--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8", "--setenv", *_BIND_NOW]
    if root:
        return [*command, "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return [*command, "--uid", "65534", "--gid", "65534"]


def _isolation(isolation: str) -> str:
    """The isolation to use: bubblewrap where installed, ``unshare`` otherwise; never a fallback
    from a sandbox that is installed but fails to start to a weaker one."""
    if isolation not in ISOLATIONS:
        raise ConfigError(f"isolation must be one of {', '.join(ISOLATIONS)}, not {isolation!r}")
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable("the code sandbox needs Linux namespaces; this platform has none")
    found = [name for name in ("bwrap", "unshare") if shutil.which(name) and isolation in ("auto", name)]
    if not found:
        wanted = "bubblewrap (bwrap) or unshare" if isolation == "auto" else isolation
        raise SandboxUnavailable(f"no {wanted} found to isolate programs: install Debian's bubblewrap package")
    return found[0]


class Sandbox:
    """A pool of warm sandboxed workers that run programs against tests.

    :param workers: worker processes (programs run concurrently); default: the CPU count.
    :param isolation: ``auto`` (bubblewrap, else ``unshare``), ``bwrap`` or ``unshare``. A
        :class:`SandboxUnavailable` error is raised when the requested isolation cannot start;
        there is no unisolated fallback.
    :param max_processes: processes a program may have at once (RLIMIT_NPROC, plus the worker).
    :param tmpfs_mb: size of the private ``/tmp`` of each worker, in MiB.
    """

    def __init__(
        self, workers: int | None = None, *, isolation: str = "auto", max_processes: int = 16, tmpfs_mb: int = 64
    ) -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be at least 1, not {workers}")
        if max_processes < 1:
            raise ConfigError(f"max_processes must be at least 1, not {max_processes}")
        if tmpfs_mb < 1:  # 0 would also turn off the unshare fallback's private mounts
            raise ConfigError(f"tmpfs_mb must be at least 1, not {tmpfs_mb}")
        self._max_processes, self._tmpfs_mb = max_processes, tmpfs_mb
        self._lock = threading.Lock()
        self.isolation = _isolation(isolation)
        self._workers: list[_Worker] = []
        try:
            self._workers += [self._launch() for _ in range(workers or os.cpu_count() or 1)]
            for worker in self._workers:  # they start concurrently
                worker.wait_ready()
        except OSError as exc:
            self.close()
            raise SandboxUnavailable(f"the {self.isolation} sandbox did not start: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _launch(self) -> _Worker:
        return _Worker(self.isolation, max_processes=self._max_processes, tmpfs_mb=self._tmpfs_mb)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        workers, self._workers = getattr(self, "_workers", []), []
        for worker in workers:
            worker.kill()

    def execute(
        self,
        program: str,
        tests: Sequence[str] | str,
        *,
        entry_point: str | None = None,
        timeout_s: float = 5.0,
        memory_mb: int = 512,
    ) -> Outcome:
        """Run one program against its tests: one entry of :meth:`execute_many`, same parameters."""
        entry_points = None if entry_point is None else [entry_point]
        return self.execute_many(
            [program], [tests], entry_points=entry_points, timeout_s=timeout_s, memory_mb=memory_mb
        )[0]

    def execute_many(
        self,
        programs: Sequence[str],
        tests: Sequence[Sequence[str] | str],
        *,
        entry_points: Sequence[str | None] | None = None,
        timeout_s: float = 5.0,
        memory_mb: int = 512,
    ) -> list[Outcome]:
        """Run each program against its own tests, concurrently on the workers, in order.

        :param programs: Python source of each program.
        :param tests: per program, a list of assert statements (each one test) or a HumanEval-style
            test source defining ``check(candidate)`` (each assert it executes is one test).
        :param entry_points: per program, the function the tests call (required with a ``check``
            source; with a list, checked to exist when given).
        :param timeout_s: wall-clock seconds per program (compile, top level and tests together);
            CPU time is limited to the next whole second above it.
        :param memory_mb: address-space limit per process, in MiB (the forked interpreter counts).
        :return: one :class:`Outcome` per program, in the order given.
        """
        jobs = _jobs(programs, tests, entry_points, timeout_s, memory_mb)
        with self._lock:
            if not self._workers:
                raise ConfigError("this Sandbox is closed")
            return self._run(jobs, timeout_s)

    def _run(self, jobs: list[dict[str, Any]], timeout_s: float) -> list[Outcome]:
        """Keep ``_DEPTH`` jobs queued on each worker (the next job waits in its pipe, so a worker
        never waits for the host) and collect the replies, which come back in order per worker."""
        results: list[Outcome | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        queued: list[deque[int]] = [deque() for _ in self._workers]  # per worker slot, in order
        deadline = [0.0] * len(self._workers)  # host deadline of each slot's first queued job

        def lost(slot: int, outcome: Outcome) -> None:  # the worker is gone: score its job, requeue the rest
            results[queued[slot].popleft()] = outcome
            pending.extendleft(reversed(queued[slot]))
            queued[slot].clear()
            self._replace(slot)

        while pending or any(queued):
            for slot in range(len(self._workers)):
                while pending and len(queued[slot]) < _DEPTH:
                    if not queued[slot]:
                        deadline[slot] = time.monotonic() + timeout_s + _GRACE_S
                    try:
                        self._workers[slot].send(jobs[pending[0]])
                    except OSError:  # the worker died: between jobs, or during the job it is running
                        if queued[slot]:
                            lost(slot, _DIED)
                        else:
                            self._replace(slot)
                        break
                    queued[slot].append(pending.popleft())
            busy = [slot for slot in range(len(self._workers)) if queued[slot]]
            if not busy:  # every send found a dead worker, now replaced: send again
                continue
            wait = max(0.0, min(deadline[slot] for slot in busy) - time.monotonic())
            fds = {self._workers[slot].fd: slot for slot in busy}
            for fd in select.select(list(fds), [], [], wait)[0]:
                slot = fds[fd]
                replies = self._workers[slot].poll_replies()
                if replies is None:
                    lost(slot, _DIED)
                    continue
                for reply in replies:
                    results[queued[slot].popleft()] = _from_reply(reply)
                    deadline[slot] = time.monotonic() + timeout_s + _GRACE_S
            for slot in busy:
                if queued[slot] and time.monotonic() > deadline[slot]:
                    lost(slot, _outcome("timeout", detail="the sandbox worker stopped answering"))
        return [r for r in results if r is not None]

    def _replace(self, slot: int) -> None:
        self._workers[slot].kill()
        self._workers[slot] = self._launch().wait_ready()


def _from_reply(reply: dict[str, Any]) -> Outcome:
    try:
        return _outcome(
            str(reply["status"]),
            int(reply["passed"]),
            int(reply["run"]),
            str(reply["detail"]),
            float(reply["seconds"]),
        )
    except (KeyError, TypeError, ValueError):
        return _outcome("runtime_error", detail="malformed reply from the sandbox worker")


def _jobs(
    programs: Sequence[str],
    tests: Sequence[Sequence[str] | str],
    entry_points: Sequence[str | None] | None,
    timeout_s: float,
    memory_mb: int,
) -> list[dict[str, Any]]:
    if isinstance(programs, str):
        raise ConfigError("programs must be a list of program sources, not one string")
    if len(tests) != len(programs):
        raise ConfigError(f"tests has {len(tests)} entries for {len(programs)} programs")
    if entry_points is not None and len(entry_points) != len(programs):
        raise ConfigError(f"entry_points has {len(entry_points)} entries for {len(programs)} programs")
    if not 0 < timeout_s <= 3600:
        raise ConfigError(f"timeout_s must be in (0, 3600], not {timeout_s}")
    if memory_mb < 64:
        raise ConfigError(f"memory_mb must be at least 64 (the interpreter counts), not {memory_mb}")
    jobs = []
    for i, (program, test) in enumerate(zip(programs, tests, strict=True)):
        entry_point = entry_points[i] if entry_points is not None else None
        job: dict[str, Any] = {
            "program": str(program),
            "entry_point": entry_point,
            "timeout_s": float(timeout_s),
            "memory_mb": int(memory_mb),
            "file_mb": min(int(memory_mb), 64),
        }
        if isinstance(test, str):
            if entry_point is None:
                raise ConfigError(f"program {i}: a check(candidate) test source needs its entry point")
            job["test"] = test
        else:
            if not test or not all(isinstance(t, str) for t in test):
                raise ConfigError(f"program {i}: tests must be a non-empty list of assert statements or a string")
            job["tests"] = list(test)
        jobs.append(job)
    return jobs


_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    """The process-wide pool :func:`execute` and :func:`execute_many` use, started on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Sandbox()
            atexit.register(_default.close)
        return _default


def execute(
    program: str,
    tests: Sequence[str] | str,
    *,
    entry_point: str | None = None,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
) -> Outcome:
    """:meth:`Sandbox.execute` on the :func:`default_sandbox`."""
    return default_sandbox().execute(program, tests, entry_point=entry_point, timeout_s=timeout_s, memory_mb=memory_mb)


def execute_many(
    programs: Sequence[str],
    tests: Sequence[Sequence[str] | str],
    *,
    entry_points: Sequence[str | None] | None = None,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
) -> list[Outcome]:
    """:meth:`Sandbox.execute_many` on the :func:`default_sandbox`."""
    return default_sandbox().execute_many(
        programs, tests, entry_points=entry_points, timeout_s=timeout_s, memory_mb=memory_mb
    )
