"""The warm sandbox worker: the only heron code that runs inside the sandbox.

It is started once per pool slot by :mod:`heron.code.sandbox`, already inside bubblewrap or
``unshare`` (its own network, PID, IPC and mount namespaces), and runs as a plain script with the
standard library only (``python -I -S -c SOURCE``: no ``site`` module, so no ``.pth`` file runs in
it and its heap stays small, which is what each fork copies). It sets up what must be done with
privileges (the fallback's private ``/tmp`` mounts and loopback), drops to an unprivileged uid, then
reads one job per line as JSON on stdin and answers one JSON line on stdout. Per job it forks a
child (no new interpreter) that starts its own session and process group, applies the resource
limits, enters a fresh directory under the private ``/tmp``, compiles the tests, then compiles and
runs the program against them, and writes its result as JSON to a pipe. When the child exits or the
wall-clock limit passes, the worker kills every process it can signal in its PID namespace (all but
itself: the child's process group, and whatever left it), so nothing a program started survives its
job; then it empties every writable directory (``/tmp``, and ``/var/tmp`` and ``/dev/shm`` in the
``unshare`` fallback), so nothing a program wrote is seen by the next one.

Compiled tests are cached. The first time a worker sees a test (source or list of asserts), the
child compiles it, within the job's resource limits and before the program is even compiled, and
writes one byte to the result pipe saying whether that succeeded within ``CACHE_COMPILE_S`` of CPU:
only that byte, which the program cannot change (it does not run until the byte is written), lets
the worker compile the same test itself and keep the code objects (at most ``CACHE_ENTRIES`` tests
and ``CACHE_CHARS`` characters of source, least recently used out). Later jobs with that test fork
with the code already in memory, and the child only compiles the program. So a test that does not
compile, or that exhausts the limits while compiling (a compile bomb), is only ever compiled inside a
child, as before; and a child cannot alter the worker's cached code (its memory is a copy).

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

import ast
import builtins
import contextlib
import ctypes
import errno
import fcntl
import gc
import json
import os
import resource
import select
import signal
import struct
import sys
import time
from json.encoder import encode_basestring_ascii as _encode_string
from types import CodeType
from typing import Any

RESULT_LIMIT = 1 << 16  # bytes of result JSON read from a child
DETAIL_LIMIT = 300  # characters of the failure description kept
CACHE_ENTRIES = 1024  # compiled tests a worker keeps, at most
CACHE_CHARS = 1 << 19  # and at most this many characters of their sources (the worker's heap, which forks copy)
CACHE_COMPILE_S = 0.25  # CPU seconds: a test that took longer to compile in the child is never cached
# Imported by the worker once, so a program does not pay for them. Not ``random``, which reseeds in
# every forked child (an at-fork hook), nor the large ``decimal``, ``hashlib`` and ``statistics``:
# every fork would pay for them, and few programs import them.
PREIMPORT = (
    "bisect",
    "collections",
    "functools",
    "heapq",
    "itertools",
    "math",
    "operator",
    "re",
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
    """Rewrite ``assert cond`` into ``try: record(cond) except Exception as e: record(False, e)``.

    Every new node gets the assert's location here (``ast.fix_missing_locations`` would cost more
    than the compile itself)."""

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        where = {name: getattr(node, name) for name in ("lineno", "col_offset", "end_lineno", "end_col_offset")}

        def name(identifier: str) -> ast.Name:
            return ast.Name(identifier, ast.Load(), **where)

        def record(*values: ast.expr) -> ast.stmt:
            return ast.Expr(ast.Call(name(_RECORD), list(values), [], **where), **where)

        error = record(ast.Constant(False, **where), name(_RECORD + "e"))
        handler = ast.ExceptHandler(name("Exception"), _RECORD + "e", [error], **where)
        return ast.Try([record(node.test)], [handler], [], [], **where)


def compile_tests(job: dict[str, Any]) -> list[CodeType | BaseException]:
    """Compile a job's tests: one code object per assert statement, or the one rewritten ``check``
    source; a test that does not compile gives its exception instead, raised when it would run."""
    compiled: list[CodeType | BaseException] = []
    for i, source in enumerate(job["tests"] if "tests" in job else [job["test"]]):
        try:
            if "tests" in job:
                compiled.append(compile(source, f"<test {i}>", "exec"))
            else:
                compiled.append(compile(_CountAsserts().visit(ast.parse(source, "<test>")), "<test>", "exec"))
        except BaseException as exc:
            compiled.append(exc)
    return compiled


def _run(test: CodeType | BaseException, namespace: dict[str, Any]) -> None:
    if isinstance(test, BaseException):
        raise test
    exec(test, namespace)


def evaluate(job: dict[str, Any], tests: list[CodeType | BaseException] | None = None) -> dict[str, Any]:
    """Compile and run one program and its tests in this process; return the result counts.

    :param job: the job dictionary (see the module docstring).
    :param tests: the job's tests, compiled by :func:`compile_tests` (compiled here when None).
    :return: ``{"status", "passed", "run", "detail"}``.
    """
    if tests is None:
        tests = compile_tests(job)
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
        for i, test in enumerate(tests):
            counts[0] += 1
            try:
                _run(test, namespace)
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
            namespace[_RECORD] = record
            _run(tests[0], namespace)
            namespace["check"](namespace[str(entry_point)])
        except BaseException as exc:
            counts[0] += 1
            counts[2] += not isinstance(exc, AssertionError)
            failures.append(f"check stopped: {_describe(exc)}")
    status = ("runtime_error" if counts[2] else "failed") if failures else "passed"
    detail = (failures or [""])[0][:DETAIL_LIMIT]
    return {"status": status, "passed": counts[1], "run": counts[0], "detail": detail}


def _child(job: dict[str, Any], workdir: str, result_fd: int, devnull: int, tests: list[CodeType] | None) -> None:
    """Everything the forked child does before and around :func:`evaluate`; never returns. The
    environment and ``sys.argv`` are the worker's, set once (see :func:`main`).

    The first byte written to the result pipe is ``C`` when this child compiled the tests (``tests``
    is None: the worker has not cached them) without error and within ``CACHE_COMPILE_S``, else
    ``-``; it is written before the program is compiled, so the program cannot change it. The
    result follows as JSON, written without ``json.dumps``: the fewer of the worker's pages a child
    touches, the fewer it copies."""
    try:
        os.setsid()
        os.dup2(result_fd, 3)
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
        compiled: list[CodeType | BaseException]
        if tests is None:
            start = time.process_time()
            compiled = compile_tests(job)
            ok = time.process_time() - start < CACHE_COMPILE_S and not any(
                isinstance(test, BaseException) for test in compiled
            )
            os.write(3, b"C" if ok else b"-")
        else:
            compiled = list(tests)
            os.write(3, b"-")
        result = evaluate(job, compiled)
        detail = _encode_string(result["detail"])
        line = f'{{"status": "{result["status"]}", "passed": {result["passed"]:d}, "run": {result["run"]:d}, '
        os.write(3, f'{line}"detail": {detail}}}'.encode()[: RESULT_LIMIT - 1])
    finally:
        os._exit(0)


def _sweep() -> None:
    """Kill every process this worker may signal (all but itself: it is pid 1 of its namespace), which
    includes the job's process group and anything that left it, then reap them."""
    try:
        os.kill(-1, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return  # none it may signal: the child was the only one, and it is reaped
    give_up = time.monotonic() + 2.0
    while time.monotonic() < give_up:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.0005)


def _empty(top: str) -> None:
    """Remove everything under ``top``, whatever modes a program gave it, to any depth (no recursion)."""
    try:
        _remove_below(top)
    except PermissionError:  # a program of the directory's owner (the unshare fallback as a user) locked it
        os.chmod(top, 0o1777)
        _remove_below(top)


def _remove_below(top: str) -> None:
    stack = [top]
    while stack:
        path = stack[-1]
        with os.scandir(path) as scan:
            entries = list(scan)
        folders = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                os.chmod(entry.path, 0o700)
                folders.append(entry.path)
            else:
                os.unlink(entry.path)
        if folders:
            stack += folders  # then ``path`` again, to remove it once they are gone
        else:
            stack.pop()
            if path != top:
                os.rmdir(path)


class _Tests:
    """The worker's cache of compiled tests, by source (see the module docstring)."""

    def __init__(self) -> None:
        self._compiled: dict[tuple[str, ...], list[CodeType]] = {}
        self._chars = 0

    @staticmethod
    def key(job: dict[str, Any]) -> tuple[str, ...]:
        return ("tests", *job["tests"]) if "tests" in job else ("test", job["test"])

    def get(self, job: dict[str, Any]) -> list[CodeType] | None:
        key = self.key(job)
        tests = self._compiled.pop(key, None)
        if tests is not None:
            self._compiled[key] = tests  # most recently used last
        return tests

    def add(self, job: dict[str, Any]) -> None:
        """Compile the job's tests here and keep them; only after a child compiled them within limits."""
        key = self.key(job)
        chars = sum(map(len, key))
        if chars > CACHE_CHARS or key in self._compiled:
            return
        compiled = compile_tests(job)
        tests = [test for test in compiled if isinstance(test, CodeType)]
        if len(tests) < len(compiled):
            return
        self._compiled[key] = tests
        self._chars += chars
        while len(self._compiled) > CACHE_ENTRIES or self._chars > CACHE_CHARS:
            oldest = next(iter(self._compiled))
            del self._compiled[oldest]
            self._chars -= sum(map(len, oldest))


def run_job(job: dict[str, Any], workdir: str, writable: list[str], devnull: int, cache: _Tests) -> dict[str, Any]:
    """Fork a child for one job, wait for it under the wall-clock limit, clean up after it.

    :param job: the job dictionary (see the module docstring).
    :param workdir: the program's directory, created empty for each job.
    :param writable: the directories programs can write to (``workdir`` is in one): all are emptied
        after each job, once no process the program started is left.
    :param devnull: a descriptor open on ``/dev/null``, the program's stdin, stdout and stderr.
    :param cache: the compiled tests.
    :return: the reply dictionary.
    """
    start = time.monotonic()
    os.mkdir(workdir, 0o700)
    tests = cache.get(job)
    read_fd, write_fd = os.pipe()
    gc.freeze()  # in the child, the worker's objects stay out of every collection: never walked, never copied
    try:
        pid = os.fork()
    except OSError:
        gc.unfreeze()
        os.close(read_fd)
        os.close(write_fd)
        os.rmdir(workdir)
        raise
    if pid == 0:
        os.close(read_fd)
        _child(job, workdir, write_fd, devnull, tests)
    gc.unfreeze()
    os.close(write_fd)
    pidfd = os.pidfd_open(pid)
    deadline = start + float(job["timeout_s"])
    exited = False
    while not exited and (remaining := deadline - time.monotonic()) > 0:  # the result waits in the pipe
        exited = bool(select.select([pidfd], [], [], remaining)[0])
    _, wait_status = os.waitpid(pid, 0) if exited else (0, 0)
    _sweep()
    os.close(pidfd)
    chunks: list[bytes] = []
    size = 0
    os.set_blocking(read_fd, False)  # should a writer have survived the sweep
    with contextlib.suppress(BlockingIOError):
        while size < RESULT_LIMIT and (data := os.read(read_fd, RESULT_LIMIT)):
            chunks.append(data)
            size += len(data)
    os.close(read_fd)
    with contextlib.suppress(OSError):
        os.rmdir(workdir)  # most programs write nothing: then a single scan of each directory follows
    for path in writable:
        _empty(path)
    result = b"".join(chunks)[:RESULT_LIMIT]
    if result[:1] == b"C":
        cache.add(job)
    seconds = time.monotonic() - start
    if not exited:
        return {"status": "timeout", "passed": 0, "run": 0, "detail": "wall-clock limit", "seconds": seconds}
    try:
        reply = json.loads(result[1:])
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


def _private_filesystem(tmpfs_mb: int, exposes: list[str]) -> list[str]:
    """The ``unshare`` fallback: what bubblewrap's arguments do, in this private mount namespace.

    Fresh tmpfs mounts on ``/tmp``, ``/var/tmp`` and ``/dev/shm``; each ``ancestor:path`` in
    ``exposes`` hides ``ancestor`` (a directory others cannot enter, such as ``/root``) under an
    empty tmpfs and binds ``path`` (the Python installation) back; then every mount but those
    tmpfs and ``/proc`` is remounted read-only.

    :return: the writable directories (the tmpfs mounts, ``/tmp`` first).
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
    return scratch


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
    import socket  # only here: every fork of a worker copies what it imported

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def _options(arguments: list[str]) -> dict[str, list[str]]:
    """The worker's command line, as the host writes it (not argparse: it imports ``shutil``, ``lzma``
    and more, which every fork would copy): ``--nproc=N`` (RLIMIT_NPROC for each job), ``--uid=N``
    (the unprivileged uid to switch to when root), ``--path=DIR`` (appended to ``sys.path``, repeated),
    and for the ``unshare`` fallback ``--private-mounts=MIB`` (the tmpfs size), ``--expose=ANCESTOR:PATH``
    (repeated) and ``--loopback-up``; ``--heron-sandbox-worker`` only names the process in ``/proc``."""
    options: dict[str, list[str]] = {}
    for argument in arguments:
        if not argument.startswith("--"):
            sys.exit(f"heron sandbox worker: unexpected argument {argument!r}")
        name, _, value = argument[2:].partition("=")
        options.setdefault(name, []).append(value)
    return options


def main() -> None:
    """Set up, drop privileges, then serve jobs until stdin closes."""
    options = _options(sys.argv[1:])
    nproc = int(options["nproc"][0])
    if os.getpid() > 2:
        sys.exit("heron sandbox worker: not in a private PID namespace; refusing to run")
    sys.path += options.get("path", [])  # site-packages, where the host's Python has them (``-S`` left them out)
    for name in PREIMPORT:
        __import__(name)
    writable = ["/tmp"]
    if "private-mounts" in options:
        writable = _private_filesystem(int(options["private-mounts"][0]), options.get("expose", []))
    if "loopback-up" in options:
        _loopback_up()
    uid = int(options.get("uid", ["0"])[0])
    if uid and os.getuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    elif os.getuid() == 0:
        _drop_capabilities()
    libc = ctypes.CDLL(None)
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binary gives privileges back
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)  # programs may not ptrace or read this worker
    workdir = os.path.join(writable[0], "program")
    os.environ.clear()  # once here, not in each child: what every program sees
    os.environ.update({"HOME": workdir, "TMPDIR": workdir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    sys.argv = ["solution"]
    devnull = os.open(os.devnull, os.O_RDWR)
    cache = _Tests()
    out = sys.stdout.buffer
    out.write(json.dumps({"ready": True, "uid": os.getuid()}).encode() + b"\n")
    out.flush()
    for line in sys.stdin.buffer:
        job = json.loads(line)
        job["nproc"] = nproc
        try:
            reply = run_job(job, workdir, writable, devnull, cache)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ENOMEM):
                raise
            reply = {"status": "runtime_error", "passed": 0, "run": 0, "detail": _describe(exc), "seconds": 0.0}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    main()
