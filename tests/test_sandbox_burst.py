"""A burst of acquires on a cold pool starts hosts concurrently, bounded by max_starting and max_hosts.

Behaviour only (no timing asserts; the speed targets are in bench/sandbox.py). Most tests use an
in-process fake executor behind a real unix socket, so the pool's own code (claim, grow, top-up,
hand-out, reset-and-reuse) runs unchanged; one uses the real local executor, one Docker.
"""

from __future__ import annotations

import json
import socketserver
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from toolgym.errors import ConfigError, SandboxError
from toolgym.sandboxes import SandboxConfig
from toolgym.sandboxes.pool import ExecutorPool, ExecutorSandbox, HostHandle
from toolgym.sandboxes.testing import require_docker, small_config

_LEN = struct.Struct(">I")


class _FakeExecutor(socketserver.StreamRequestHandler):
    """Answers the executor protocol's ping/open/exec/reset on one connection (every run prints 1)."""

    def handle(self) -> None:
        while True:
            head = self.rfile.read(4)
            if len(head) < 4:
                return
            req = json.loads(self.rfile.read(_LEN.unpack(head)[0]))
            op = req.get("op")
            if op == "open":
                reply: dict[str, Any] = {"ok": True, "workdir": "/work/s0", "slot": 0}
            elif op == "exec":
                reply = {"ok": True, "status": "ok", "stdout": "1\n", "stderr": "", "exit_code": 0, "wall_s": 0.0}
            elif op == "reset":
                reply = {"ok": True, "clean": True}
            else:
                reply = {"ok": True}
            data = json.dumps(reply).encode()
            self.wfile.write(_LEN.pack(len(data)) + data)


class FakeHosts:
    """A backend whose hosts are in-process fake executors, each on its own unix socket."""

    name = "fake"

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="toolgym-burst-"))
        self.servers: dict[str, socketserver.ThreadingUnixStreamServer] = {}

    def start_host(self, index: int) -> HostHandle:
        path = str(self.root / f"h{index}.sock")
        server = socketserver.ThreadingUnixStreamServer(path, _FakeExecutor)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers[path] = server
        return HostHandle(host_id=f"fake-{index}", socket_path=path)

    def stop_host(self, handle: HostHandle) -> None:
        server = self.servers.pop(handle.socket_path)
        server.shutdown()
        server.server_close()

    def reap(self) -> int:
        return 0

    def close(self) -> None:
        for server in list(self.servers.values()):
            server.shutdown()
            server.server_close()


class Counting:
    """Wraps a backend: counts starts, concurrent starts and running hosts.

    Each start waits (up to ``gate_s``) until ``gate_at`` starts are in flight together, so a pool
    that starts hosts concurrently is seen doing so however slow the machine; one that starts them
    one after another never reaches ``gate_at`` (and the test fails on the peak, not on a clock).
    """

    def __init__(self, inner: Any, gate_at: int, gate_s: float = 10.0, fail: str = ""):
        self.inner, self.name = inner, inner.name
        self.gate_at, self.gate_s, self.fail = gate_at, gate_s, fail
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.starting = self.peak_starting = self.started = 0
        self.running = self.peak_running = 0

    def start_host(self, index: int) -> HostHandle:
        with self.lock:
            self.started += 1
            self.starting += 1
            self.peak_starting = max(self.peak_starting, self.starting)
            if self.starting >= self.gate_at:
                self.gate.set()
        try:
            self.gate.wait(self.gate_s)
            time.sleep(0.02)  # keep starts overlapping, so one past the limit would be seen
            if self.fail:
                raise SandboxError(self.fail)
            handle = self.inner.start_host(index)
        finally:
            with self.lock:
                self.starting -= 1
        with self.lock:
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
        return handle

    def stop_host(self, handle: HostHandle) -> None:
        self.inner.stop_host(handle)
        with self.lock:
            self.running -= 1

    def reap(self) -> int:
        return self.inner.reap()

    def close(self) -> None:
        self.inner.close()


def burst(pool: ExecutorPool, n: int, hold: Callable[[ExecutorSandbox], None], timeout: float = 60.0) -> list[str]:
    """``n`` threads acquire at once, each calls ``hold`` on its session, then closes it; returns errors."""
    errors: list[str] = []
    go = threading.Barrier(n)

    def episode() -> None:
        go.wait()
        try:
            with pool.acquire(timeout=timeout) as sb:
                hold(sb)
        except Exception as exc:  # collected: the test asserts there are none
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=episode) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 30)
    assert not any(t.is_alive() for t in threads), "an acquire never returned"
    return errors


def run_ok(sb: ExecutorSandbox) -> None:
    result = sb.run("print(1)")
    assert result.ok and result.stdout == "1\n", result


def held_until_all(n: int) -> Callable[[ExecutorSandbox], None]:
    """A ``hold`` that keeps every session until all ``n`` are acquired (so none is reused)."""
    together = threading.Barrier(n, timeout=60)

    def hold(sb: ExecutorSandbox) -> None:
        run_ok(sb)
        together.wait()

    return hold


def fake_pool(gate_at: int, **overrides: Any) -> tuple[ExecutorPool, Counting]:
    backend = Counting(FakeHosts(), gate_at=gate_at)
    return ExecutorPool(SandboxConfig(backend="local", **overrides), backend), backend


@pytest.mark.parametrize("pool_size", [0, 1])
def test_burst_starts_hosts_concurrently_up_to_max_starting(pool_size):
    pool, backend = fake_pool(4, pool_size=pool_size, max_hosts=16, max_starting=4)
    with pool:
        errors = burst(pool, 12, held_until_all(12))
        assert errors == []
        assert backend.peak_starting == 4  # reached the limit and never went past it
        # exactly the demand: 12 sessions held at once, plus at most the warm spares
        assert 12 <= backend.started <= 12 + pool_size
        assert pool.stats()["waiting"] == 0


def test_burst_respects_max_hosts_and_reuses_sessions():
    pool, backend = fake_pool(3, pool_size=1, max_hosts=5, max_starting=4)
    with pool:
        assert burst(pool, 12, run_ok) == []
        assert backend.peak_running <= 5
        assert backend.peak_starting <= 4
        assert backend.started <= 5  # sessions are reset and reused: no host is replaced
        stats = pool.stats()
        assert stats["waiting"] == 0 and stats["in_use"] == 0 and stats["acquire_max_ms"] > 0


def test_burst_on_packed_hosts_starts_one_host_per_sessions_per_host():
    pool, backend = fake_pool(4, pool_size=0, max_hosts=16, max_starting=8, sessions_per_host=3, share_hosts=True)
    with pool:
        assert burst(pool, 12, held_until_all(12)) == []
        assert backend.started == 4  # 12 waiting claimers / 3 sessions per host
        assert backend.peak_starting == 4


def test_failing_starts_raise_and_leave_no_waiters():
    backend = Counting(FakeHosts(), gate_at=1, fail="engine said no")
    with ExecutorPool(SandboxConfig(backend="local", pool_size=0, max_starting=4), backend) as pool:
        errors = burst(pool, 6, run_ok, timeout=1.5)
        assert len(errors) == 6 and all("engine said no" in e for e in errors)
        assert pool.stats()["waiting"] == 0 and pool.start_failures >= 1


def test_pool_checks_its_config_before_starting_anything():
    backend = Counting(FakeHosts(), gate_at=1)
    with pytest.raises(ConfigError, match="share_hosts"):
        ExecutorPool(SandboxConfig(backend="local", sessions_per_host=2), backend)
    assert backend.started == 0
    backend.close()


def test_burst_on_real_local_executors():
    from toolgym.sandboxes.local_backend import LocalHosts

    cfg = small_config("local-unisolated", pool_size=0, max_hosts=6, max_starting=3)
    backend = Counting(LocalHosts(cfg, isolated=False), gate_at=3)
    with ExecutorPool(cfg, backend) as pool:
        assert burst(pool, 6, held_until_all(6)) == []
        assert backend.peak_starting == 3 and backend.started == 6


@pytest.mark.docker
def test_docker_burst_gets_working_sessions_started_concurrently():
    require_docker()
    from toolgym.sandboxes.docker_backend import DockerHosts

    cfg = small_config("docker", pool_size=1, max_hosts=16, max_starting=16)
    backend = Counting(DockerHosts(cfg), gate_at=4, gate_s=30.0)
    with ExecutorPool(cfg, backend) as pool:
        assert burst(pool, 16, held_until_all(16), timeout=180.0) == []
        assert backend.peak_starting >= 4  # started together, not one after another
        assert 16 <= backend.started <= 17 and backend.peak_running <= 16
