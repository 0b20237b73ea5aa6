"""The warm sandbox worker: the only heron code that runs inside the sandbox.

It is started once per pool slot by :mod:`heron.code.sandbox`, already inside bubblewrap or
``unshare`` (its own network, PID, IPC and mount namespaces), and runs as a plain script with the
standard library only (``python -I _worker.py``). It sets up what must be done with privileges
(the fallback's private ``/tmp`` mounts and loopback), drops to an unprivileged uid, then reads one
job per line as JSON on stdin and answers one JSON line on stdout. Per job it forks a child (no new
interpreter) that starts its own session and process group, applies the resource limits, enters a
fresh temporary directory, compiles and runs the program and its tests, and writes its result as
JSON to a pipe. When the child exits or the wall-clock limit passes, the worker kills the child's
whole process group and then every other process it can signal in its PID namespace, so nothing a
program started survives its job.

A job is ``{"program", "tests" | "test", "entry_point", "timeout_s", "memory_mb", "file_mb"}``; a
reply is ``{"status", "passed", "run", "detail", "seconds"}``.

Counting: with a list of assert statements, each statement runs on its own; it passes when it
finishes and fails on any exception. With a HumanEval ``check`` test, every ``assert`` in the test
source is rewritten so that it records its outcome and carries on: an assert whose condition is
false or raises counts as one failed test; an exception that escapes ``check`` (outside any assert)
stops it and counts as one more failed test. A failed test whose exception was not an
AssertionError is also an error: any error makes the status ``runtime_error`` (as in CodeRL).
"""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import ctypes
import errno
import fcntl
import json
import os
import resource
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from typing import Any

RESULT_LIMIT = 1 << 16  # bytes of result JSON read from a child
DETAIL_LIMIT = 300  # characters of the failure description kept
PREIMPORT = (
    "bisect",
    "collections",
    "decimal",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "math",
    "operator",
    "random",
    "re",
    "statistics",
    "string",
    "typing",
)
_PR_SET_DUMPABLE, _PR_CAPBSET_DROP, _PR_SET_SECUREBITS, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT = 4, 24, 28, 38, 47
_PR_CAP_AMBIENT_CLEAR_ALL, _LINUX_CAPABILITY_VERSION_3 = 4, 0x20080522
_SECUREBITS = 0x2F  # NOROOT, NO_SETUID_FIXUP, KEEP_CAPS_LOCKED, each locked where a lock exists
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND = 1, 2, 4, 8, 32, 4096
_MS_REC, _MS_PRIVATE, _MNT_DETACH = 1 << 14, 1 << 18, 2
_MOUNT_FLAGS = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC, "noatime": 1024, "nodiratime": 2048}
_MOUNT_FLAGS["relatime"] = 1 << 21
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_RECORD = "__heron_record__"


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:DETAIL_LIMIT]


class _CountAsserts(ast.NodeTransformer):
    """Rewrite ``assert cond`` into ``try: record(cond) except Exception as e: record(False, e)``."""

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        def record(*values: ast.expr) -> ast.stmt:
            return ast.Expr(ast.Call(ast.Name(_RECORD, ast.Load()), list(values), []))

        error = ast.Name(_RECORD + "e", ast.Load())
        handler = ast.ExceptHandler(
            ast.Name("Exception", ast.Load()), _RECORD + "e", [record(ast.Constant(False), error)]
        )
        return ast.copy_location(ast.Try([record(node.test)], [handler], [], []), node)


def evaluate(job: dict[str, Any]) -> dict[str, Any]:
    """Compile and run one program and its tests in this process; return the result counts.

    :param job: the job dictionary (see the module docstring).
    :return: ``{"status", "passed", "run", "detail"}``.
    """
    try:
        code = compile(job["program"], "<program>", "exec")
    except BaseException as exc:
        return {"status": "compile_error", "passed": 0, "run": 0, "detail": _describe(exc)}
    namespace: dict[str, Any] = {"__name__": "solution", "__builtins__": builtins}
    try:
        exec(code, namespace)
    except BaseException as exc:
        return {"status": "runtime_error", "passed": 0, "run": 0, "detail": _describe(exc)}
    entry_point = job.get("entry_point")
    if entry_point is not None and not callable(namespace.get(entry_point)):
        return {"status": "runtime_error", "passed": 0, "run": 0, "detail": f"{entry_point} is not defined"}
    counts = [0, 0, 0]  # run, passed, errors
    failures: list[str] = []
    if "tests" in job:
        for i, test in enumerate(job["tests"]):
            counts[0] += 1
            try:
                exec(compile(test, f"<test {i}>", "exec"), namespace)
                counts[1] += 1
            except BaseException as exc:
                counts[2] += not isinstance(exc, AssertionError)
                failures.append(f"test {i}: {_describe(exc)}")
    else:

        def record(value: object, error: BaseException | None = None) -> None:
            try:
                ok = bool(value)
            except Exception as exc:
                ok, error = False, exc
            counts[0] += 1
            counts[1] += ok
            counts[2] += error is not None
            if not ok:
                failures.append(f"assert {counts[0] - 1}: {_describe(error) if error else 'failed'}")

        try:
            tree = _CountAsserts().visit(ast.parse(job["test"], "<test>"))
            namespace[_RECORD] = record
            exec(compile(ast.fix_missing_locations(tree), "<test>", "exec"), namespace)
            namespace["check"](namespace[str(entry_point)])
        except BaseException as exc:
            counts[0] += 1
            counts[2] += not isinstance(exc, AssertionError)
            failures.append(f"check stopped: {_describe(exc)}")
    status = ("runtime_error" if counts[2] else "failed") if failures else "passed"
    detail = (failures or [""])[0][:DETAIL_LIMIT]
    return {"status": status, "passed": counts[1], "run": counts[0], "detail": detail}


def _child(job: dict[str, Any], workdir: str, result_fd: int) -> None:
    """Everything the forked child does before and around :func:`evaluate`; never returns."""
    try:
        os.setsid()
        os.dup2(result_fd, 3)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(4, 1 << 16)
        cpu = int(job["timeout_s"]) + 1
        memory = int(job["memory_mb"]) << 20
        files = int(job["file_mb"]) << 20
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (files, files))
        resource.setrlimit(resource.RLIMIT_NPROC, (job["nproc"], job["nproc"]))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update({"HOME": workdir, "TMPDIR": workdir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        tempfile.tempdir = workdir
        sys.argv = ["solution"]
        data = json.dumps(evaluate(job)).encode()
        os.write(3, data[:RESULT_LIMIT])
    finally:
        os._exit(0)


def _sweep(pgid: int) -> None:
    """Kill the job's process group and every other process this worker may signal, then reap."""
    for target, sig in ((-pgid, signal.SIGKILL), (-1, signal.SIGKILL)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, sig)
    give_up = time.monotonic() + 2.0
    while time.monotonic() < give_up:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.0005)


def _remove(path: str) -> None:
    def unlock(function: Any, name: str, _: Any) -> None:
        os.chmod(os.path.dirname(name), 0o700)
        os.chmod(name, 0o700)
        function(name)

    shutil.rmtree(path, onerror=unlock)


def run_job(job: dict[str, Any], scratch: str) -> dict[str, Any]:
    """Fork a child for one job, wait for it under the wall-clock limit, clean up after it.

    :param job: the job dictionary (see the module docstring).
    :param scratch: the directory under which each job gets a fresh temporary directory.
    :return: the reply dictionary.
    """
    start = time.monotonic()
    workdir = tempfile.mkdtemp(dir=scratch)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(job, workdir, write_fd)
    os.close(write_fd)
    pidfd = os.pidfd_open(pid)
    deadline = start + float(job["timeout_s"])
    chunks: list[bytes] = []
    size = 0
    timed_out = exited = False
    watch = [read_fd, pidfd]
    while not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        ready, _, _ = select.select(watch, [], [], remaining)
        if pidfd in ready:
            exited = True
            os.set_blocking(read_fd, False)
        if read_fd in ready or exited:
            try:
                data = os.read(read_fd, RESULT_LIMIT)
            except BlockingIOError:
                data = b""
            if not data and not exited:
                watch = [pidfd]  # the program closed the result pipe: wait for the exit alone
            elif size < RESULT_LIMIT:
                chunks.append(data)
                size += len(data)
    _, wait_status = os.waitpid(pid, 0) if exited else (0, 0)
    _sweep(pid)
    os.close(read_fd)
    os.close(pidfd)
    _remove(workdir)
    seconds = time.monotonic() - start
    if timed_out:
        return {"status": "timeout", "passed": 0, "run": 0, "detail": "wall-clock limit", "seconds": seconds}
    try:
        reply = json.loads(b"".join(chunks)[:RESULT_LIMIT])
        reply["seconds"] = seconds
        return reply
    except ValueError:
        pass
    if os.WIFSIGNALED(wait_status) and os.WTERMSIG(wait_status) == signal.SIGXCPU:
        return {"status": "timeout", "passed": 0, "run": 0, "detail": "CPU-time limit", "seconds": seconds}
    if os.WIFSIGNALED(wait_status):
        detail = f"killed by signal {signal.Signals(os.WTERMSIG(wait_status)).name}"
    else:
        detail = f"exited with code {os.waitstatus_to_exitcode(wait_status)} before reporting"
    return {"status": "runtime_error", "passed": 0, "run": 0, "detail": detail, "seconds": seconds}


def _mount(libc: Any, source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    args = [None if v is None else v.encode() for v in (source, target, fstype, data)]
    if libc.mount(args[0], args[1], args[2], flags, args[3]) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target} failed")


def _private_filesystem(tmpfs_mb: int, exposes: list[str]) -> None:
    """The ``unshare`` fallback: what bubblewrap's arguments do, in this private mount namespace.

    Fresh tmpfs mounts on ``/tmp``, ``/var/tmp`` and ``/dev/shm``; each ``ancestor:path`` in
    ``exposes`` hides ``ancestor`` (a directory others cannot enter, such as ``/root``) under an
    empty tmpfs and binds ``path`` (the Python installation) back; then every mount but those
    tmpfs and ``/proc`` is remounted read-only.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    _mount(libc, "none", "/", None, _MS_REC | _MS_PRIVATE, None)
    scratch = []
    for path in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(path):
            _mount(libc, "tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={tmpfs_mb}m,mode=1777")
            scratch.append(path)
    staged = []
    for i, pair in enumerate(exposes):  # first bind each path aside: the tmpfs will hide it
        ancestor, path = pair.split(":", 1)
        staging = f"/tmp/.heron-expose-{i}"
        os.mkdir(staging, 0o700)
        _mount(libc, path, staging, None, _MS_BIND | _MS_REC, None)
        staged.append((ancestor, path, staging))
    for ancestor in dict.fromkeys(ancestor for ancestor, _, _ in staged):
        _mount(libc, "tmpfs", ancestor, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=755")
    for _, path, staging in staged:
        os.makedirs(path, 0o755, exist_ok=True)
        _mount(libc, staging, path, None, _MS_BIND | _MS_REC, None)
        libc.umount2(staging.encode(), _MNT_DETACH)
        os.rmdir(staging)
    with open("/proc/self/mountinfo") as mountinfo:
        mounts = [(line.split()[4], line.split()[5].split(",")) for line in mountinfo]
    for target, options in mounts:
        if target in scratch or target == "/proc" or target.startswith("/proc/"):
            continue
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY
        flags |= sum(flag for name, flag in _MOUNT_FLAGS.items() if name in options)
        _mount(libc, None, target, None, flags, None)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    """For a worker that stays uid 0 of its own user namespace (``unshare`` as a non-root user):
    lose every capability for good, also across exec (securebits), as a plain uid would."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_SECUREBITS, _SECUREBITS, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "setting securebits failed")
    for cap in range(64):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the last capability
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    if libc.capset(ctypes.byref(header), (_CapData * 2)()) != 0:
        raise OSError(ctypes.get_errno(), "dropping capabilities failed")


def _loopback_up() -> None:
    """The ``unshare`` fallback: a fresh network namespace starts with its loopback down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def main() -> None:
    """Set up, drop privileges, then serve jobs until stdin closes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--uid", type=int, default=0, help="unprivileged uid to switch to (when root)")
    parser.add_argument("--nproc", type=int, required=True, help="RLIMIT_NPROC for each job")
    parser.add_argument("--private-mounts", type=int, default=0, help="tmpfs MiB for /tmp (unshare fallback)")
    parser.add_argument("--expose", action="append", default=[], help="ANCESTOR:PATH to bind back (fallback)")
    parser.add_argument("--loopback-up", action="store_true", help="bring lo up (unshare fallback)")
    parser.add_argument("--heron-sandbox-worker", action="store_true", help="names this process in /proc")
    args = parser.parse_args()
    if os.getpid() > 2:
        sys.exit("heron sandbox worker: not in a private PID namespace; refusing to run")
    for name in PREIMPORT:
        __import__(name)
    if args.private_mounts:
        _private_filesystem(args.private_mounts, args.expose)
    if args.loopback_up:
        _loopback_up()
    if args.uid and os.getuid() == 0:
        os.setgroups([])
        os.setgid(args.uid)
        os.setuid(args.uid)
    elif os.getuid() == 0:
        _drop_capabilities()
    libc = ctypes.CDLL(None)
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binary gives privileges back
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)  # programs may not ptrace or read this worker
    scratch = tempfile.mkdtemp(prefix="heron-")
    out = sys.stdout.buffer
    out.write(json.dumps({"ready": True, "uid": os.getuid()}).encode() + b"\n")
    out.flush()
    for line in sys.stdin.buffer:
        job = json.loads(line)
        job["nproc"] = args.nproc
        try:
            reply = run_job(job, scratch)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ENOMEM):
                raise
            reply = {"status": "runtime_error", "passed": 0, "run": 0, "detail": _describe(exc), "seconds": 0.0}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    main()
