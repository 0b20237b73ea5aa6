"""The code sandbox: statuses, factors, counting, and containment of hostile programs.

Every attack is really attempted inside the sandbox, and containment is checked from the host.
Network tests touch only loopback: the program's own loopback inside the sandbox's network
namespace, and a listener this test opens on the host's 127.0.0.1 that must stay unreachable.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heron.code import sandbox as sandbox_module
from heron.code.sandbox import Outcome, Sandbox, SandboxUnavailable, execute, execute_many
from heron.errors import ConfigError

SECRET = "heron-test-secret-5f1c2a"
AVAILABLE = [name for name in ("bwrap", "unshare") if shutil.which(name)]
pytestmark = pytest.mark.skipif(not AVAILABLE, reason="no bubblewrap or unshare on this machine")

INC = "def inc(x):\n    return x + 1\n"


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    """The default isolation, two workers; the secret is in this process's environment first."""
    os.environ["HERON_SANDBOX_SECRET"] = SECRET
    with Sandbox(2) as sandbox:
        yield sandbox


@pytest.fixture(scope="module", params=AVAILABLE)
def each(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """One worker per available isolation: the attacks run against each."""
    os.environ["HERON_SANDBOX_SECRET"] = SECRET
    with Sandbox(1, isolation=request.param) as sandbox:
        yield sandbox


def _uid_processes(uid: int) -> list[int]:
    """Host pids whose real uid is ``uid`` (read from /proc/PID/status, readable for any process)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as status:
                line = next(line for line in status if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(line.split()[1]) == uid:
            pids.append(int(name))
    return pids


def _programs_left(sandbox: Sandbox) -> list[int]:
    """Processes of the sandbox's uids other than the workers themselves."""
    workers = {worker.uid: worker for worker in sandbox._workers}
    left = []
    for uid in workers:
        left += [pid for pid in _uid_processes(uid) if os.getpid() != pid]
    worker_pids = set()
    for pid in left:
        try:
            with open(f"/proc/{pid}/status") as status:
                parent = next(int(line.split()[1]) for line in status if line.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        if parent in {worker.process.pid for worker in workers.values()}:
            worker_pids.add(pid)  # the worker itself: its parent is the bwrap / unshare process
    return [pid for pid in left if pid not in worker_pids]


def _factors(outcome: Outcome) -> tuple[float, float, float, float]:
    f = outcome.factors
    return f["compiles"], f["runs"], f["pass_rate"], f["passed"]


def test_statuses_and_factors(box: Sandbox) -> None:
    programs = [INC, INC, "def inc(x) return x", "raise ValueError('top level')", "while True:\n    pass\n", "x = 1"]
    tests = [["assert inc(1) == 2", "assert inc(2) == 3"], ["assert inc(1) == 2", "assert inc(2) == 4"]] + [
        ["assert inc(1) == 2"]
    ] * 4
    entry = [None, None, None, None, None, "inc"]
    out = box.execute_many(programs, tests, entry_points=entry, timeout_s=1.0)
    assert [o.status for o in out] == ["passed", "failed", "compile_error", "runtime_error", "timeout", "runtime_error"]
    assert _factors(out[0]) == (1.0, 1.0, 1.0, 1.0)
    assert _factors(out[1]) == (1.0, 1.0, 0.5, 0.0)
    assert (out[1].tests_passed, out[1].tests_run) == (1, 2)
    assert _factors(out[2]) == (0.0, 0.0, 0.0, 0.0)
    assert _factors(out[3]) == (1.0, 0.0, 0.0, 0.0) == _factors(out[4]) == _factors(out[5])
    assert "SyntaxError" in out[2].detail and "ValueError: top level" in out[3].detail
    assert "inc is not defined" in out[5].detail
    assert out[4].seconds < 2.0


def test_list_tests_count_exceptions_as_failures(box: Sandbox) -> None:
    out = box.execute(INC, ["assert inc(1) == 2", "assert inc('a') == 1", "inc(None)", "assert inc(0) == 1"])
    assert out.status == "runtime_error" and (out.tests_passed, out.tests_run) == (2, 4)
    assert _factors(out) == (1.0, 1.0, 0.5, 0.0) and out.detail.startswith("test 1: TypeError")


def test_check_source_counts_executed_asserts(box: Sandbox) -> None:
    check = (
        "def check(candidate):\n"
        "    assert candidate(1) == 2\n"
        "    for i in range(4):\n"
        "        assert candidate(i) == i + (i % 2)\n"  # passes for odd i only
        "    assert candidate('x') == 1, 'raises inside the assert'\n"
    )
    out = box.execute(INC, check, entry_point="inc")
    assert out.status == "runtime_error" and (out.tests_passed, out.tests_run) == (3, 6)
    assert _factors(out) == (1.0, 1.0, 0.5, 0.0) and out.detail == "assert 1: failed"
    assert box.execute(INC, check.rsplit("\n", 2)[0] + "\n", entry_point="inc").status == "failed"
    stops = "def check(candidate):\n    assert candidate(1) == 2\n    candidate(None)\n    assert candidate(2) == 3\n"
    out = box.execute(INC, stops, entry_point="inc")
    assert out.status == "runtime_error" and (out.tests_passed, out.tests_run) == (1, 2)  # the escape counts once
    assert "check stopped: TypeError" in out.detail
    good = "def check(candidate):\n    assert candidate(1) == 2\n    assert True, 'a message'\n"
    assert box.execute(INC, good, entry_point="inc").status == "passed"


def test_exits_and_crashes_are_runtime_errors(box: Sandbox) -> None:
    programs = ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "import os, signal\nos.kill(os.getpid(), 11)"]
    out = box.execute_many(programs, [["assert True"]] * 3)
    assert [o.status for o in out] == ["runtime_error"] * 3
    assert "SystemExit" in out[0].detail and "before reporting" in out[1].detail and "SIGSEGV" in out[2].detail


def test_module_functions_and_order(box: Sandbox) -> None:
    programs = [f"def f():\n    return {i}\n" for i in range(12)]
    out = execute_many(programs, [[f"assert f() == {i}"] for i in range(12)])
    assert [o.status for o in out] == ["passed"] * 12
    assert execute("def g(): return 3", ["assert g() == 4"]).status == "failed"
    sandbox_module.default_sandbox().close()
    sandbox_module._default = None


def test_bad_input_raises_config_error(box: Sandbox) -> None:
    with pytest.raises(ConfigError, match="entry point"):
        box.execute(INC, "def check(candidate): pass")
    with pytest.raises(ConfigError, match="2 entries for 1"):
        box.execute_many([INC], [["assert 1"], ["assert 1"]])
    with pytest.raises(ConfigError, match="non-empty"):
        box.execute(INC, [])
    with pytest.raises(ConfigError, match="memory_mb"):
        box.execute(INC, ["assert 1"], memory_mb=8)
    with pytest.raises(ConfigError, match="isolation"):
        Sandbox(1, isolation="docker")


def test_no_isolation_is_an_error_not_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: None)
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        Sandbox(1)
    monkeypatch.undo()
    monkeypatch.setattr(sandbox_module, "_WORKER", "/nonexistent/_worker.py")
    with pytest.raises(SandboxUnavailable, match="did not start"):
        Sandbox(1, isolation=AVAILABLE[0])


@settings(max_examples=15, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=8))
def test_pass_rate_is_the_share_of_passing_asserts(box: Sandbox, truths: list[bool]) -> None:
    tests = [f"assert inc({i}) == {i + 1 if ok else i}" for i, ok in enumerate(truths)]
    check = "def check(candidate):\n" + "".join(f"    {t.replace('inc', 'candidate')}\n" for t in tests)
    listed, checked = box.execute_many([INC, INC], [tests, check], entry_points=[None, "inc"])
    for out in (listed, checked):
        assert out.tests_run == len(truths) and out.tests_passed == sum(truths)
        assert out.factors["pass_rate"] == pytest.approx(sum(truths) / len(truths))
        assert out.status == ("passed" if all(truths) else "failed")


# Attacks: each runs against every available isolation.


def test_fork_bomb_is_bounded_and_cleaned_up(each: Sandbox) -> None:
    counter = (
        "import os, time\nn = 0\ntry:\n    while n < 500:\n        if os.fork() == 0:\n"
        "            time.sleep(30)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\n"
    )
    out = each.execute(counter, ["assert n < 17"], timeout_s=5.0)
    assert out.status == "passed", out
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    start = time.monotonic()
    out = each.execute(bomb, ["assert True"], timeout_s=1.0)
    assert out.status in ("timeout", "runtime_error") and time.monotonic() - start < 8
    assert _programs_left(each) == []
    assert each.execute(INC, ["assert inc(1) == 2"]).status == "passed"


def test_memory_bomb(each: Sandbox) -> None:
    bombs = ["x = bytearray(1 << 36)", "xs = []\nwhile True:\n    xs.append(bytearray(1 << 24))\n"]
    out = each.execute_many(bombs, [["assert True"]] * 2, memory_mb=256, timeout_s=5.0)
    assert [o.status for o in out] == ["runtime_error"] * 2 and "MemoryError" in out[1].detail
    assert each.execute(INC, ["assert inc(1) == 2"]).status == "passed"


def test_infinite_loops_kill_the_whole_group(each: Sandbox) -> None:
    program = "import os\nif os.fork() == 0:\n    os.setsid()\n    while True:\n        pass\nwhile True:\n    pass\n"
    start = time.monotonic()
    out = each.execute(program, ["assert True"], timeout_s=1.0)
    assert out.status == "timeout" and time.monotonic() - start < 5
    assert _programs_left(each) == []
    sleeper = "import time\ntime.sleep(60)"  # wall clock, not CPU: the wall-clock limit must end it
    assert each.execute(sleeper, ["assert True"], timeout_s=0.5).status == "timeout"


def test_writes_and_deletes_outside_the_temp_dir_do_not_reach_the_host(each: Sandbox, tmp_path: Path) -> None:
    var_tmp = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="heron-test-"))
    try:
        victims = []
        for folder in (tmp_path, var_tmp):
            folder.chmod(0o777)
            victim = folder / "keep.txt"
            victim.write_text("keep")
            victim.chmod(0o666)
            victims.append(victim)
        program = (
            "import os, shutil\n"
            f"for folder in {[str(tmp_path), str(var_tmp)]!r}:\n"
            "    for action in (lambda: open(os.path.join(folder, 'evil.txt'), 'w').write('x'),\n"
            "                   lambda: os.remove(os.path.join(folder, 'keep.txt')),\n"
            "                   lambda: open(os.path.join(folder, 'keep.txt'), 'w').write('gone'),\n"
            "                   lambda: shutil.rmtree(folder)):\n"
            "        try:\n            action()\n        except OSError:\n            pass\n"
            "open('local.txt', 'w').write('fine')\nLOCAL = open('local.txt').read()\n"
        )
        out = each.execute(program, ["assert LOCAL == 'fine'"])
        assert out.status == "passed", out
        for victim in victims:
            assert victim.read_text() == "keep"
            assert not (victim.parent / "evil.txt").exists()
    finally:
        shutil.rmtree(var_tmp)


def test_parent_environment_is_out_of_reach(each: Sandbox) -> None:
    program = (
        "import os\nFOUND = [k for k, v in os.environ.items() if " + repr(SECRET) + " in v]\n"
        "READ = []\n"
        f"for pid in ['1', '2', str(os.getppid()), {str(os.getpid())!r}]:\n"
        "    try:\n        data = open(f'/proc/{pid}/environ', 'rb').read()\n"
        "    except OSError:\n        continue\n"
        f"    if {SECRET.encode()!r} in data:\n        READ.append(pid)\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n        data = open(f'/proc/{pid}/environ', 'rb').read()\n"
        "    except OSError:\n        continue\n"
        f"    if {SECRET.encode()!r} in data:\n        READ.append(pid)\n"
    )
    assert os.environ["HERON_SANDBOX_SECRET"] == SECRET
    out = each.execute(program, ["assert FOUND == []", "assert READ == []"])
    assert out.status == "passed", out


def test_programs_hold_no_privileges(each: Sandbox) -> None:
    program = (
        "import os\nSTATUS = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())\n"
        "UID = os.getuid()\nMOUNTED = []\nfor path in ('/', '/usr', '/etc'):\n"
        "    try:\n        open(os.path.join(path, 'heron-probe'), 'w')\n        MOUNTED.append(path)\n"
        "    except OSError:\n        pass\n"
    )
    tests = ["assert STATUS['CapEff'].strip() == '0' * 16", "assert STATUS['NoNewPrivs'].strip() == '1'"]
    tests += ["assert UID != 0 or STATUS['CapEff'].strip() == '0' * 16", "assert MOUNTED == []"]
    out = each.execute(program, tests)
    assert out.status == "passed", out


def test_signalling_the_parent_does_not_reach_the_host(each: Sandbox) -> None:
    me = os.getpid()
    program = (
        "import os, signal\n"
        f"for target in (os.getppid(), {me}, -1, 1):\n"
        "    try:\n        os.kill(target, signal.SIGKILL)\n    except OSError:\n        pass\n"
    )
    out = each.execute(program, ["assert True"])
    assert out.status in ("passed", "runtime_error")  # the attack may take its own process down
    assert each.execute(INC, ["assert inc(1) == 2"]).status == "passed"  # we are alive, so is the pool
    os.kill(me, 0)


def test_only_the_sandbox_loopback_is_reachable(each: Sandbox) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as host_listener:
        host_listener.bind(("127.0.0.1", 0))
        host_listener.listen()
        host_port = host_listener.getsockname()[1]
        program = (
            "import socket\n"
            "INTERFACES = [name for _, name in socket.if_nameindex()]\n"
            "server = socket.socket()\nserver.bind(('127.0.0.1', 0))\nserver.listen()\n"
            "client = socket.create_connection(server.getsockname(), timeout=1)\n"
            "conn, _ = server.accept()\nclient.sendall(b'ping')\nLOCAL = conn.recv(4)\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {host_port}), timeout=1).close()\n"
            "    HOST = True\nexcept OSError:\n    HOST = False\n"
        )
        host_listener.settimeout(0.1)
        out = each.execute(program, ["assert INTERFACES == ['lo']", "assert LOCAL == b'ping'", "assert not HOST"])
        assert out.status == "passed", out
        with pytest.raises(TimeoutError):
            host_listener.accept()


def test_floods_are_contained(each: Sandbox) -> None:
    programs = [
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
        "open('big', 'wb').write(b'x' * (1 << 28))",
        "raise ValueError('y' * 1_000_000)",
    ]
    out = each.execute_many(programs, [["assert True"]] * 3, timeout_s=1.0)
    assert [o.status for o in out] == ["timeout", "runtime_error", "runtime_error"]
    assert len(out[2].detail) <= 300


def _kill_a_worker_and_run(sandbox: Sandbox) -> None:
    worker = sandbox._workers[0]
    os.kill(worker.pid, signal.SIGKILL)  # from the host: the namespace's pid 1 dies, and its namespace
    worker.process.wait()
    assert select.select([worker.fd], [], [], 10)[0]  # the worker's end of the pipe is closed
    out = sandbox.execute_many([INC] * 4, [["assert inc(1) == 2"]] * 4)
    assert [o.status for o in out] == ["passed"] * 4  # a worker found dead between jobs is replaced
    assert sandbox._workers[0] is not worker


def test_a_dead_worker_is_replaced_in_a_pool(box: Sandbox) -> None:
    _kill_a_worker_and_run(box)


def test_a_dead_worker_is_replaced(each: Sandbox) -> None:
    _kill_a_worker_and_run(each)


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("unshare"), reason="needs root to stand in for a user")
def test_unshare_for_a_non_root_user_keeps_no_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-root user's fallback stays uid 0 of its own user namespace: it must hold no capability."""
    monkeypatch.setattr(sandbox_module.os, "getuid", lambda: 4242)  # the host side takes the non-root path
    with Sandbox(1, isolation="unshare") as sandbox:
        monkeypatch.undo()
        program = (
            "import ctypes, subprocess\n"
            "CAPS = open('/proc/self/status').read().split('CapEff:')[1].split()[0]\n"
            "REMOUNT = ctypes.CDLL(None).mount(None, b'/', None, 32 | 4096, None)\n"  # MS_REMOUNT | MS_BIND
            "SHELL = subprocess.run(['/bin/sh', '-c', 'grep CapEff /proc/self/status'], capture_output=True).stdout\n"
        )
        tests = ["assert CAPS == '0000000000000000'", "assert REMOUNT != 0", "assert SHELL.split()[1] == b'0' * 16"]
        out = sandbox.execute(program, tests)
        assert out.status == "passed", out


def test_a_worker_dying_mid_job_scores_that_job_and_requeues_the_rest(each: Sandbox) -> None:
    worker = each._workers[0]
    killer = threading.Timer(0.5, os.kill, (worker.pid, signal.SIGKILL))
    killer.start()
    out = each.execute_many(["import time\ntime.sleep(3)", INC, INC], [["assert True"]] + [["assert inc(1) == 2"]] * 2)
    killer.join()
    assert [o.status for o in out] == ["runtime_error", "passed", "passed"]
    assert out[0].detail == "the sandbox worker died during the program"


def test_nothing_a_program_writes_is_left_for_the_next(each: Sandbox) -> None:
    writer = (
        "import os\n"
        "for folder in ('/tmp', '/var/tmp', '/dev/shm', os.getcwd()):\n"
        "    try:\n"
        "        os.makedirs(os.path.join(folder, 'left', 'deep'))\n"
        "        open(os.path.join(folder, 'left', 'deep', 'file'), 'w').write('x')\n"
        "        os.chmod(os.path.join(folder, 'left', 'deep'), 0)\n"
        "        os.chmod(os.path.join(folder, 'left'), 0o500)\n"
        "        os.symlink('/usr', os.path.join(folder, 'file'))\n"
        "    except OSError:\n"
        "        pass\n"
    )
    reader = (
        "import os\n"
        "LEFT = [os.path.join(f, n) for f in ('/tmp', '/var/tmp', '/dev/shm') if os.path.isdir(f)"
        " for n in os.listdir(f) if n in ('left', 'file')]\n"
        "TMP = os.listdir('/tmp')\nHERE = os.path.basename(os.getcwd())\n"
    )
    checks = ["assert LEFT == []", "assert TMP == [HERE]", "assert not os.listdir()"]
    out = each.execute_many([writer, reader], [["assert os.path.isdir('/tmp/left')"], checks])
    assert [o.status for o in out] == ["passed", "passed"], out
    assert os.path.isdir("/usr") and os.listdir("/usr")  # the symlink was removed, not followed


CACHE_PROBE = (  # walks up to the worker's run_job and reads its cache of compiled tests
    "import sys\nframe = sys._getframe()\nwhile 'cache' not in frame.f_locals:\n    frame = frame.f_back\n"
    "CACHE = frame.f_locals['cache']._compiled\nCACHED = [key[1] for key in CACHE if key[0] == 'test']\n"
)


def test_tests_compile_in_the_child_first_then_from_the_cache(each: Sandbox) -> None:
    good = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(2) == 4\n"
    broken = "def check(candidate):\n    assert candidate(1) ==\n"
    for _ in range(2):  # the first time compiled in the child, the second from the worker's cache
        out = each.execute_many([INC, INC], [good, broken], entry_points=["inc", "inc"])
        assert [(o.status, o.tests_passed, o.tests_run) for o in out] == [("failed", 1, 2), ("runtime_error", 0, 1)]
        assert "SyntaxError" in out[1].detail
    probe = CACHE_PROBE + f"GOOD = {good!r} in CACHED\nBROKEN = {broken!r} in CACHED\n"
    assert each.execute(probe, ["assert GOOD", "assert not BROKEN"]).status == "passed"


def test_a_program_cannot_change_the_cached_tests(each: Sandbox) -> None:
    check = "def check(candidate):\n    assert candidate(1) == 2\n"
    assert each.execute(INC, check, entry_point="inc").status == "passed"  # now cached
    forger = (
        CACHE_PROBE + "def inc(x):\n    return x\n"
        "for key in CACHE:\n    CACHE[key] = [compile('def check(candidate):\\n    pass\\n', '<test>', 'exec')]\n"
    )
    assert each.execute(forger, check, entry_point="inc").status == "failed"  # its tests were loaded already
    assert each.execute("def inc(x):\n    return x\n", check, entry_point="inc").status == "failed"
