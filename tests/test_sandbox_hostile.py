"""Hostile code: every attack ends in a typed result in bounded time, loses nothing, leaks nothing.

Each case runs against Docker and, where the local backend isolates it, the local backend. While the
attack runs, a neighbouring episode keeps running code and must see only correct results; after it,
a fresh episode must work.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import pytest

from toolgym.sandboxes import ExecutorPool, RunStatus
from toolgym.sandboxes.testing import open_pool

S = RunStatus
COUNT_MY_OTHER_PROCESSES = (
    "import os\n"
    "me = os.getpid()\n"
    "print(sum(1 for p in os.listdir('/proc') if p.isdigit() and int(p) != me\n"
    "          and os.stat('/proc/' + p).st_uid == os.getuid()))"
)


@dataclass(frozen=True)
class Case:
    name: str
    code: str
    statuses: frozenset[RunStatus]
    mode: str = "python"
    timeout: float = 2.0
    expect: str = ""  # substring of stdout+stderr
    backends: tuple[str, ...] = ("docker", "local")
    needs_root_locally: bool = False  # uid drop (root) makes the local backend isolate this
    needs_bwrap_locally: bool = False
    same_session_after: str = ""  # code whose stdout must be "0\n" in the same session afterwards
    under_gvisor: frozenset[RunStatus] | None = None  # where gVisor's kernel answers otherwise (see each case)


CASES = [
    Case("infinite_loop", "while True: pass", frozenset({S.TIMEOUT}), timeout=1.0),
    Case("ignores_sigterm", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
         "while True: time.sleep(0.01)", frozenset({S.TIMEOUT}), timeout=1.0),
    Case("fork_bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
         frozenset({S.TIMEOUT, S.ERROR, S.KILLED}), needs_root_locally=True,
         same_session_after=COUNT_MY_OTHER_PROCESSES,
         # gVisor's kernel is one host process: 64 forked interpreters outgrow the container's memory
         # before RLIMIT_NPROC stops them, and the host's OOM killer ends the whole container (a typed
         # sandbox_lost; the pool replaces it) where runc's kills one process.
         under_gvisor=frozenset({S.TIMEOUT, S.ERROR, S.KILLED, S.SANDBOX_LOST})),
    Case("shell_fork_bomb", ":(){ :|:& };:", frozenset({S.OK, S.ERROR, S.TIMEOUT, S.KILLED}), mode="shell",
         needs_root_locally=True, same_session_after=COUNT_MY_OTHER_PROCESSES),
    Case("memory_bomb", "x = []\nwhile True:\n    x.append(bytearray(16 << 20))", frozenset({S.OOM})),
    Case("huge_allocation", "b = bytearray(8 << 30)", frozenset({S.OOM})),
    Case("output_flood", "import sys\nchunk = 'x' * 65536\nwhile True:\n    sys.stdout.write(chunk)",
         frozenset({S.OUTPUT_TRUNCATED})),
    Case("shell_output_flood", "yes flood", frozenset({S.OUTPUT_TRUNCATED}), mode="shell"),
    Case("stderr_flood", "import os\nwhile True:\n    os.write(2, b'e' * 65536)", frozenset({S.OUTPUT_TRUNCATED})),
    Case("big_file", "with open('big', 'wb') as f:\n    while True:\n        f.write(b'0' * (1 << 20))",
         frozenset({S.ERROR}), expect="File too large"),
    Case("disk_fill", "i = 0\nwhile True:\n    with open(f'f{i}', 'wb') as f:\n        f.write(b'0' * (4 << 20))\n"
         "    i += 1", frozenset({S.ERROR}), expect="No space left", timeout=10.0, needs_bwrap_locally=True),
    Case("write_outside_workdir", "open('/usr/lib/pwned', 'w').write('x')", frozenset({S.ERROR}),
         expect="Error", needs_root_locally=True),
    Case("write_etc_shell", "echo x > /etc/pwned", frozenset({S.ERROR}), mode="shell",
         needs_root_locally=True),
    Case("read_executor_channel", "import os\n"
         "for p in os.listdir('/proc'):\n"
         "    try:\n        args = open(f'/proc/{p}/cmdline').read().split('\\0')\n    except OSError:\n        continue\n"
         "    path = next((a for a in args if a.endswith('executor.py')), None)\n"
         "    if path:\n        print(open(path).read())", frozenset({S.ERROR}),
         expect="PermissionError", needs_root_locally=True),
    Case("read_root_only_file", "print(open('/etc/shadow').read())", frozenset({S.ERROR}),
         expect="PermissionError", needs_root_locally=True),
    Case("kill_executor", "import os, signal\nfor pid in (1, os.getppid()):\n    try:\n"
         "        os.kill(pid, signal.SIGKILL)\n    except OSError as e:\n        print(type(e).__name__)\n"
         "try:\n    os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:  # gVisor: nobody else to signal\n"
         "    pass\nprint('alive')", frozenset({S.OK}), expect="PermissionError", needs_root_locally=True,
         same_session_after="print(0)"),
    Case("setsid_escape", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
         "        time.sleep(1000)\n    os._exit(0)\nprint('parent done')", frozenset({S.OK}),
         needs_root_locally=True, same_session_after=COUNT_MY_OTHER_PROCESSES),
    Case("shell_setsid_escape", "setsid sleep 1000 > /dev/null 2>&1 & echo started", frozenset({S.OK}),
         mode="shell", needs_root_locally=True, same_session_after=COUNT_MY_OTHER_PROCESSES),
    Case("zombie_storm", "import os\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
         "            os._exit(0)\n        n += 1\nexcept OSError:\n    print('stopped')", frozenset({S.OK}),
         expect="stopped", needs_root_locally=True, same_session_after=COUNT_MY_OTHER_PROCESSES,
         # fork is slow under gVisor's ptrace platform: the run times out before forking fails
         under_gvisor=frozenset({S.OK, S.TIMEOUT})),
    Case("fd_exhaustion", "fs = []\nwhile True:\n    fs.append(open('/dev/null'))", frozenset({S.ERROR}),
         expect="Too many open files"),
    Case("repl_memory_bomb", "x = []\nwhile True:\n    x.append(bytearray(16 << 20))", frozenset({S.OOM}),
         mode="repl"),
    Case("repl_infinite_loop", "while True: pass", frozenset({S.TIMEOUT}), mode="repl", timeout=1.0),
]


class Neighbour:
    """Another episode that keeps running small programs while the attack runs.

    It has finished one run before the attack starts and finishes one more after it ends.
    """

    def __init__(self, pool: ExecutorPool):
        self.sandbox = pool.acquire()
        self.failures: list[str] = []
        self.runs = 0
        self._stop = threading.Event()
        self._ran = threading.Condition()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        self._wait_for(1)

    def _wait_for(self, runs: int) -> None:
        with self._ran:
            self._ran.wait_for(lambda: self.runs >= runs or bool(self.failures), timeout=60)

    def _loop(self) -> None:
        while not self._stop.is_set():
            n = self.runs
            res = self.sandbox.run(f"print({n} + 1)", timeout=30)
            if res.status is not RunStatus.OK or res.stdout != f"{n + 1}\n":
                self.failures.append(repr(res))
            with self._ran:
                self.runs += 1
                self._ran.notify_all()
            time.sleep(0.02)

    def finish(self) -> None:
        self._wait_for(self.runs + 1)
        self._stop.set()
        self._thread.join(timeout=60)
        self.sandbox.close()


def _skip_if_not_isolated(case: Case, pool: ExecutorPool) -> None:
    backend = "local" if pool.backend == "local-unisolated" else pool.backend  # same limits, no namespaces
    if backend not in case.backends:
        pytest.skip(f"{case.name}: the {pool.backend} backend does not isolate this (see its docstring)")
    if backend == "local":
        if case.needs_root_locally and os.geteuid() != 0:
            pytest.skip(f"{case.name}: the local backend isolates this only when run as root")
        if case.needs_bwrap_locally and pool.backend_impl.mode != "bwrap":
            pytest.skip(f"{case.name}: the local backend isolates this only under bubblewrap")


def _attack(pool: ExecutorPool, case: Case) -> None:
    # Under gVisor a neighbour in another container was seen to stall for 35 s while an attack ran
    # (not root-caused; see bench/RESULTS.md), so there the attack is tested without one.
    neighbour = Neighbour(pool) if pool.config.runtime != "runsc" else None
    try:
        with pool.acquire() as sb:
            start = time.monotonic()
            res = sb.run(case.code, mode=case.mode, timeout=case.timeout)  # type: ignore[arg-type]
            elapsed = time.monotonic() - start
            gvisor = pool.config.runtime == "runsc" and case.under_gvisor is not None
            assert res.status in (case.under_gvisor if gvisor else case.statuses), res
            assert elapsed < case.timeout + pool.config.grace_s + 15, elapsed
            if res.status is not S.TIMEOUT or not gvisor:
                assert case.expect in res.stdout + res.stderr, res
            if case.same_session_after and res.status is not S.SANDBOX_LOST:
                # Killed processes are reaped by the container's init a moment later: poll briefly.
                deadline = time.monotonic() + 5
                after = sb.run(case.same_session_after, timeout=10)
                while after.stdout != "0\n" and time.monotonic() < deadline:
                    time.sleep(0.1)
                    after = sb.run(case.same_session_after, timeout=10)
                assert after.status is RunStatus.OK and after.stdout == "0\n", after
        with pool.acquire() as fresh:
            nxt = fresh.run("import os; print('next', len(os.listdir('.')))", timeout=10)
            assert nxt.status is RunStatus.OK and nxt.stdout == "next 0\n", nxt
    finally:
        if neighbour is not None:
            neighbour.finish()
    if neighbour is not None:
        assert neighbour.runs >= 2 and neighbour.failures == []


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_code(any_pool, case):
    _skip_if_not_isolated(case, any_pool)
    _attack(any_pool, case)


PACKED = ("infinite_loop", "fork_bomb", "memory_bomb", "output_flood", "kill_executor", "setsid_escape",
          "zombie_storm", "fd_exhaustion", "repl_memory_bomb")


@pytest.fixture(scope="module")
def packed_pool():
    pool = open_pool("docker", pool_size=1, max_hosts=1, sessions_per_host=4, pids=512)
    yield pool
    pool.close()


@pytest.mark.docker
@pytest.mark.parametrize("name", PACKED)
def test_hostile_code_beside_a_neighbour_in_the_same_container(packed_pool, name):
    """Episodes packed into one container are kept apart by uid and rlimits (not disk: see docs)."""
    _attack(packed_pool, next(c for c in CASES if c.name == name))


@pytest.mark.docker
def test_container_memory_limit_reports_oom():
    pool = open_pool("docker", memory_mb=128, run_memory_mb=2048, pool_size=1)
    try:
        with pool.acquire() as sb:
            touch = "x = bytearray(400 << 20)\nfor i in range(0, len(x), 4096):\n    x[i] = 1"
            assert sb.run(touch, timeout=20).status is RunStatus.OOM
            assert sb.run("print('after')").stdout == "after\n"
            repl = sb.run(touch, mode="repl", timeout=20)
            assert repl.status is RunStatus.OOM and "restarted" in repl.note
            assert sb.run("print('after')", mode="repl").stdout == "after\n"
    finally:
        pool.close()


@pytest.mark.docker
def test_frozen_executor_is_declared_lost_and_replaced():
    import docker

    pool = open_pool("docker", grace_s=2.0)
    pool_label = f"toolgym.pool={pool.backend_impl.pool_id}"
    try:
        sb = pool.acquire()
        cid = next(h.data["container_id"] for h in pool.handles() if h.host_id == sb.info.host_id)
        docker.from_env().api.pause(cid)
        start = time.monotonic()
        res = sb.run("print(1)", timeout=1.0)
        assert res.status is RunStatus.SANDBOX_LOST
        assert time.monotonic() - start < 1.0 + 2.0 + 5
        again = sb.run("print(2)")
        assert again.ok and again.stdout == "2\n"
        sb.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and cid in [h.data["container_id"] for h in pool.handles()]:
            time.sleep(0.2)
        assert cid not in [h.data["container_id"] for h in pool.handles()]
    finally:
        pool.close()
    assert docker.from_env().containers.list(all=True, filters={"label": pool_label}) == []


FAKE_STATUS_THEN_LINGER = (
    "import os, struct, time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        while True:\n"
    "            open('alive', 'a').close()\n"
    "            time.sleep(0.02)\n"
    "    os._exit(0)\n"
    "os.wait()\n"
    "msg = b'{\"exit\": 0, \"kind\": null}'\n"
    "os.write(3, struct.pack('>I', len(msg)) + msg)  # the run's status channel\n"
    "time.sleep(1000)\n"
)
NOTHING_OF_EARLIER_RUNS_WRITES = (
    "import os, time\n"
    "if os.path.exists('alive'):\n"
    "    os.remove('alive')\n"
    "time.sleep(0.5)\n"
    "print(os.path.exists('alive'))"
)


def test_a_faked_status_report_carries_no_process_into_the_next_run(any_pool):
    """Code can forge its run's "finished" report: the run is answered at once and its own final
    sweep never runs. A process it left behind must still be gone before the next run's code starts."""
    case = Case("fake_status", FAKE_STATUS_THEN_LINGER, frozenset({S.OK, S.TIMEOUT}), needs_root_locally=True)
    _skip_if_not_isolated(case, any_pool)
    with any_pool.acquire() as sb:
        res = sb.run(case.code, timeout=3.0)
        assert res.status in case.statuses, res
        after = sb.run(NOTHING_OF_EARLIER_RUNS_WRITES, timeout=10)
        assert after.status is RunStatus.OK and after.stdout == "False\n", after
