"""A warm pool of executor hosts (containers or local processes) and the sandbox sessions on them.

Backends only know how to start, probe and stop one *host* (something running ``executor.py``
behind a unix socket); this module does the rest for both: warm spares started ahead of demand,
session hand-out, reset-and-reuse (a session returns only when the executor verified it clean,
otherwise its host is replaced), a watchdog thread that pings hosts and replaces the silent ones,
and lazy re-binding of an episode whose host was lost.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import itertools
import logging
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from toolgym.errors import SandboxError
from toolgym.sandboxes.client import ExecutorConnection, ExecutorLost
from toolgym.sandboxes.config import SandboxConfig
from toolgym.sandboxes.protocol import FileResult, RunMode, RunResult, RunStatus, SandboxInfo

log = logging.getLogger(__name__)

CALL_THREADS = 512  # most threads one pool runs async calls in (see ExecutorPool._in_thread)
RECENT = 256  # acquire waits and host start times kept for stats()


class HostBackend(Protocol):
    """What a backend provides: start, probe and stop one executor host."""

    name: str

    def start_host(self, index: int) -> HostHandle: ...

    def stop_host(self, handle: HostHandle) -> None: ...

    def reap(self) -> int: ...

    def close(self) -> None: ...


@dataclass
class HostHandle:
    """A started host: its executor socket plus backend-private data."""

    host_id: str
    socket_path: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Host:
    handle: HostHandle
    capacity: int
    control: ExecutorConnection
    in_use: int = 0
    idle: list[ExecutorConnection] = field(default_factory=list)
    retired: bool = False
    draining: bool = False  # a session was not verified clean: no new sessions; replaced once empty
    misses: int = 0  # consecutive unanswered health checks
    last_ok: float = field(default_factory=time.monotonic)

    @property
    def free(self) -> int:
        return 0 if self.draining else self.capacity - self.in_use


class ExecutorPool:
    """Hands out :class:`ExecutorSandbox` sessions over a warm pool of hosts.

    A burst of acquires on a cold pool starts hosts concurrently (up to ``config.max_starting``)
    so that hosts starting plus free slots cover the claimers waiting, never more than that demand
    plus the ``pool_size`` warm spares.

    Args:
        config: Limits and pool sizes (checked: a bad config raises :class:`ConfigError`).
        backend: Starts and stops hosts (Docker containers or local processes).
    """

    def __init__(self, config: SandboxConfig, backend: HostBackend):
        config.check()
        self.config = config
        self.backend_impl = backend
        self.backend = backend.name
        self._hosts: list[_Host] = []
        self._starting = 0
        self._waiting = 0  # claimers that found no free slot and wait for a host
        self._lock = threading.Condition()
        self._closed = False
        self._counter = itertools.count()
        # One thread per concurrent start: more would only queue behind max_starting anyway.
        self._starter = ThreadPoolExecutor(max_workers=config.max_starting, thread_name_prefix="sandbox-start")
        self._stopper = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sandbox-stop")
        self._calls: ThreadPoolExecutor | None = None  # the async calls' threads, made on the first one
        self.start_failures = 0
        self.hosts_started = 0
        self._failed_streak = 0  # consecutive failed starts: a broken backend is retried one at a time
        self.last_start_error = ""
        # Recent acquire waits and host start times (backend start, executor ready), in seconds; under the lock.
        self.acquire_waits: deque[float] = deque(maxlen=RECENT)
        self.start_times: deque[tuple[float, float]] = deque(maxlen=RECENT)
        reaped = backend.reap()
        if reaped:
            log.info("sandbox: reaped %d leftover host(s) of dead owners", reaped)
        self._watchdog = threading.Thread(target=self._watch, name="sandbox-watchdog", daemon=True)
        self._watchdog.start()
        with self._lock:
            self._top_up()

    # -- host life-cycle ------------------------------------------------------------------------
    def _top_up(self) -> None:
        """Start hosts so that ``pool_size`` hosts with a free slot exist or are on their way. Holds lock."""
        if self._closed:
            return
        spare = sum(1 for h in self._hosts if not h.retired and h.free > 0) + self._starting
        live = self._live()
        while spare < self.config.pool_size and live < self.config.max_hosts:
            spare += 1
            live += 1
            self._submit_start()

    def _grow(self) -> None:
        """Start hosts until those starting plus the free slots cover the waiting claimers. Holds lock.

        Bounded by ``max_hosts`` and ``max_starting``; after a failed start only one at a time, so a
        broken backend (no image, engine down) is not hammered with parallel doomed starts.
        """
        if self._closed:
            return
        cfg = self.config
        free = sum(h.free for h in self._hosts if not h.retired)
        covered = free + self._starting * cfg.sessions_per_host
        most = 1 if self._failed_streak else cfg.max_starting
        live = self._live()
        while covered < self._waiting and live < cfg.max_hosts and self._starting < most:
            covered += cfg.sessions_per_host
            live += 1
            self._submit_start()

    def _submit_start(self) -> None:
        """Count one more host as starting and start it in a starter thread. Holds lock."""
        self._starting += 1
        self._starter.submit(self._start_one, next(self._counter))

    def _live(self) -> int:
        """Hosts counted against ``max_hosts``: running or starting, not those on their way out. Holds lock."""
        return sum(1 for h in self._hosts if not h.retired and not h.draining) + self._starting

    def _start_one(self, index: int) -> None:
        host, handle, timing = None, None, (0.0, 0.0)
        try:
            began = time.perf_counter()
            handle = self.backend_impl.start_host(index)
            started = time.perf_counter()
            control = ExecutorConnection(handle.socket_path, connect_timeout=30.0)
            control.request({"op": "ping"}, timeout=10.0)
            host = _Host(handle=handle, capacity=self.config.sessions_per_host, control=control)
            timing = (started - began, time.perf_counter() - started)
        except Exception as exc:  # a failed start is counted and retried by the next top-up
            log.warning("sandbox: host start failed: %s", exc)
            with self._lock:
                self.start_failures += 1
                self.last_start_error = str(exc)
            if handle is not None:
                self._stopper.submit(self.backend_impl.stop_host, handle)
        with self._lock:
            self._starting -= 1
            self._failed_streak = 0 if host is not None else self._failed_streak + 1
            if host is not None:
                self.hosts_started += 1
                self.start_times.append(timing)
                if self._closed:
                    self._stopper.submit(self._stop, host)
                else:
                    self._hosts.append(host)
            self._lock.notify_all()

    def _retire(self, host: _Host, why: str) -> None:
        with self._lock:
            if host.retired or self._closed:
                return
            host.retired = True
            log.info("sandbox: replacing host %s (%s)", host.handle.host_id, why)
            self._top_up()
            self._lock.notify_all()
        self._stopper.submit(self._stop, host)

    def _stop(self, host: _Host) -> None:
        host.control.close()
        for conn in host.idle:
            conn.close()
        try:
            self.backend_impl.stop_host(host.handle)
        except Exception as exc:  # best effort: start-up reaping and the executor's orphan exit back this up
            log.warning("sandbox: stopping %s failed: %s", host.handle.host_id, exc)

    def _watch(self) -> None:
        """Watchdog: ping every host; replace those that do not answer; keep spares warm."""
        while not self._closed:
            time.sleep(1.0)
            with self._lock:
                hosts = [h for h in self._hosts if not h.retired]
                self._hosts = [h for h in self._hosts if not h.retired or h.in_use > 0]
            for host in hosts:
                self._health_check(host)
            with self._lock:
                self._top_up()

    def _health_check(self, host: _Host) -> None:
        """Ping a host; replace it after two consecutive misses (one may be a long cleanup)."""
        try:
            if host.control.closed:
                host.control = ExecutorConnection(host.handle.socket_path, connect_timeout=1.0)
            host.control.request({"op": "ping"}, timeout=max(self.config.grace_s, 5.0))
            host.last_ok, host.misses = time.monotonic(), 0
        except ExecutorLost as exc:
            host.misses += 1
            if host.misses >= 2:
                self._retire(host, f"health check: {exc}")

    # -- sessions -------------------------------------------------------------------------------
    def _claim(self, deadline: float) -> tuple[_Host, ExecutorConnection | None]:
        with self._lock:
            waiting = False
            try:
                while True:
                    if self._closed:
                        raise SandboxError("sandbox pool is closed")
                    claimed = self._take_slot()
                    if claimed is not None:
                        return claimed
                    if not waiting:  # counted once, until this claimer leaves (claimed, timed out, closed)
                        waiting = True
                        self._waiting += 1
                    self._grow()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise SandboxError(f"no sandbox available in time ({self.backend}); "
                                           f"last start error: {self.last_start_error or 'none'}")
                    self._lock.wait(min(left, 0.5))
            finally:
                if waiting:
                    self._waiting -= 1

    def _take_slot(self) -> tuple[_Host, ExecutorConnection | None] | None:
        """A free slot, a warm session on it preferred, or None. Holds lock."""
        for host in self._hosts:
            if not host.retired and not host.draining and host.idle:
                host.in_use += 1
                conn = host.idle.pop()
                self._top_up()
                return host, conn
        for host in self._hosts:
            if not host.retired and host.free > 0:
                host.in_use += 1
                self._top_up()
                return host, None
        return None

    def open_session(self, timeout: float | None = None) -> tuple[_Host, ExecutorConnection, dict[str, Any]]:
        """Claim a slot and open an executor session on it (used by sandboxes and re-binding)."""
        deadline = time.monotonic() + (timeout if timeout is not None else 120.0)
        while True:
            host, conn = self._claim(deadline)
            try:
                if conn is None:
                    conn = ExecutorConnection(host.handle.socket_path)
                reply = conn.request({"op": "open"}, timeout=self.config.grace_s + 5)
                if not reply.get("ok"):
                    raise ExecutorLost(reply.get("error", "open failed"))
                return host, conn, reply
            except ExecutorLost as exc:
                if conn is not None:
                    conn.close()
                self.last_start_error = f"opening a session failed: {exc}"
                self._unclaim(host)
                self._retire(host, f"open failed: {exc}")
                if time.monotonic() >= deadline:
                    raise SandboxError(f"could not open a sandbox session: {exc}") from exc

    def _unclaim(self, host: _Host) -> None:
        with self._lock:
            host.in_use -= 1
            self._lock.notify_all()

    def acquire(self, timeout: float | None = None) -> ExecutorSandbox:
        """A clean sandbox session for one episode. Raises :class:`SandboxError` only if none can be had."""
        began = time.perf_counter()
        sandbox = ExecutorSandbox(self, *self.open_session(timeout))
        with self._lock:  # stats() copies these under the lock: a deque must not change while copied
            self.acquire_waits.append(time.perf_counter() - began)
        return sandbox

    async def aacquire(self, timeout: float | None = None) -> ExecutorSandbox:
        return await self._in_thread(self.acquire, timeout)

    def release(self, sandbox: ExecutorSandbox) -> None:
        sandbox.close()

    def _give_back(self, host: _Host, conn: ExecutorConnection | None) -> None:
        """Reset the session; keep it warm only when the executor says it is clean."""
        clean = False
        if conn is not None and not conn.closed and not host.retired:
            try:
                clean = bool(conn.request({"op": "reset"}, timeout=self.config.grace_s + 10).get("clean"))
            except ExecutorLost:
                clean = False
        with self._lock:
            host.in_use -= 1
            if clean and conn is not None and not host.retired and not host.draining and not self._closed:
                host.idle.append(conn)
                conn = None
            if not clean:
                # Episodes still running there keep going; the host is replaced when the last one leaves.
                host.draining = True
            retire_now = host.draining and host.in_use == 0
            self._lock.notify_all()
        if conn is not None:
            conn.close()
        if retire_now and not host.retired:
            self._retire(host, "a session could not be verified clean")

    def lost(self, host: _Host, why: str) -> None:
        self._retire(host, why)

    def stats(self) -> dict[str, float]:
        """Host and session counts, plus the recent acquire waits and host start times (ms, 0 if none)."""
        with self._lock:
            live = [h for h in self._hosts if not h.retired]
            counts = {"hosts": len(live), "starting": self._starting, "waiting": self._waiting,
                      "in_use": sum(h.in_use for h in live), "idle_sessions": sum(len(h.idle) for h in live),
                      "hosts_started": self.hosts_started, "start_failures": self.start_failures}
            waits, starts = list(self.acquire_waits), list(self.start_times)

        def ms(values: list[float]) -> float:
            return round(statistics.median(values) * 1000, 1) if values else 0.0

        return {**counts, "acquire_p50_ms": ms(waits), "acquire_max_ms": round(max(waits, default=0.0) * 1000, 1),
                "start_backend_p50_ms": ms([s[0] for s in starts]), "start_ready_p50_ms": ms([s[1] for s in starts])}

    def wait_ready(self, hosts: int | None = None, timeout: float = 120.0) -> None:
        """Block until ``hosts`` (default ``pool_size``) hosts are up."""
        want = self.config.pool_size if hosts is None else hosts
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(1 for h in self._hosts if not h.retired) < want:
                live = sum(1 for h in self._hosts if not h.retired) + self._starting
                for _ in range(max(0, want - live)):
                    if live >= self.config.max_hosts:
                        break
                    live += 1
                    self._submit_start()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SandboxError(f"sandbox pool not ready: {self.last_start_error or 'timed out'}")
                self._lock.wait(min(left, 0.5))

    def host_connections(self) -> list[tuple[str, str]]:
        """(host id, socket path) of every live host: for benchmarks and diagnostics."""
        with self._lock:
            return [(h.handle.host_id, h.handle.socket_path) for h in self._hosts if not h.retired]

    def handles(self) -> list[HostHandle]:
        with self._lock:
            return [h.handle for h in self._hosts if not h.retired]

    # -- async calls ----------------------------------------------------------------------------
    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking call (a run, an acquire, a close) in one of this pool's call threads.

        Async calls block a thread for a whole run (up to its timeout). asyncio's default executor
        has only a few threads, so a handful of slow runs would stall every other episode's tool
        calls: each pool has its own wide set of (mostly idle, socket-blocked) threads instead,
        started on demand and stopped by :meth:`close`. Once the pool is closed, calls (which then
        return at once: its hosts are gone) use asyncio's default executor.
        """
        loop = asyncio.get_running_loop()
        calls = self._call_threads()
        if calls is not None:
            try:
                future = loop.run_in_executor(calls, fn, *args)
            except RuntimeError:  # close() shut the threads down since we looked
                calls = None
        if calls is None:
            future = loop.run_in_executor(None, fn, *args)
        return await future

    def _call_threads(self) -> ThreadPoolExecutor | None:
        with self._lock:
            if self._closed:
                return None
            if self._calls is None:
                # threads start only as concurrent calls need them; the bound is for a large batch
                self._calls = ThreadPoolExecutor(max_workers=CALL_THREADS, thread_name_prefix="sandbox-call")
            return self._calls

    # -- life-cycle -----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (a closed pool hands out no sessions)."""
        return self._closed

    def close(self) -> None:
        """Stop every host and this pool's threads; idempotent. Other pools are not affected."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            hosts, self._hosts = self._hosts, []
            calls, self._calls = self._calls, None
            self._lock.notify_all()
        self._starter.shutdown(wait=True)
        for host in hosts:
            self._stop(host)
        self._stopper.shutdown(wait=True)
        if calls is not None:
            # Calls still in flight end on their own now that their hosts are gone; do not wait.
            calls.shutdown(wait=False)
        self.backend_impl.close()

    def __enter__(self) -> ExecutorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _encode_files(files: dict[str, bytes | str] | None) -> dict[str, str] | None:
    if not files:
        return None
    return {path: base64.b64encode(data.encode() if isinstance(data, str) else data).decode()
            for path, data in files.items()}


class ExecutorSandbox:
    """One episode's session on a host: stateless runs, a stateful Python REPL, shell, files.

    Calls are serialised by a lock. If the host is lost during a call, that call returns
    ``sandbox_lost``; the next call re-binds to a fresh host (state is gone; the result's note says so).
    """

    def __init__(self, pool: ExecutorPool, host: _Host, conn: ExecutorConnection, opened: dict[str, Any]):
        self._pool = pool
        self._host: _Host | None = host
        self._conn: ExecutorConnection | None = conn
        self._lock = threading.Lock()
        self._closed = False
        self.info = self._info(host, opened)
        self.busy_s = 0.0  # host-side seconds spent in runs and file operations (the trajectory's sandbox_s)

    def _info(self, host: _Host, opened: dict[str, Any]) -> SandboxInfo:
        return SandboxInfo(backend=self._pool.backend, host_id=host.handle.host_id,
                           workdir=opened.get("workdir", ""), slot=int(opened.get("slot", 0)))

    # -- plumbing -------------------------------------------------------------------------------
    def _rebind(self) -> str:
        host, conn, opened = self._pool.open_session()
        self._host, self._conn, self.info = host, conn, self._info(host, opened)
        return "the sandbox was replaced after a failure; files and variables from before are gone"

    def _request(self, payload: dict[str, Any], timeout: float) -> tuple[dict[str, Any] | None, str]:
        """Send under the lock; on a lost host return (None, why). Holds the lock."""
        note = ""
        if self._closed:
            return None, "sandbox is closed"
        if self._conn is None:
            try:
                note = self._rebind()
            except SandboxError as exc:
                return None, str(exc)
        assert self._conn is not None and self._host is not None
        try:
            return self._conn.request(payload, timeout), note
        except ExecutorLost as exc:
            host, self._conn, self._host = self._host, None, None
            self._pool._unclaim(host)
            self._pool.lost(host, str(exc))
            return None, str(exc)

    # -- runs -----------------------------------------------------------------------------------
    def run(self, code: str, *, mode: RunMode = "python", stdin: str | None = None,
            timeout: float | None = None, files: dict[str, bytes | str] | None = None) -> RunResult:
        """Run ``code`` (Python source, or a shell command when ``mode="shell"``).

        ``mode="repl"`` runs it in this episode's persistent Python session (variables survive
        between calls). Never raises: every outcome is a :class:`RunResult` status.
        """
        cfg = self._pool.config
        if mode not in ("python", "repl", "shell"):
            return RunResult(status=RunStatus.ERROR, stderr=f"unknown run mode {mode!r}; use python, repl or shell")
        timeout = float(timeout if timeout is not None else cfg.timeout_s)
        payload = {"op": "exec", "mode": mode, "code": code, "stdin": stdin, "timeout": timeout,
                   "output_limit": cfg.output_limit_bytes, "limits": cfg.run_limits(timeout),
                   "files": _encode_files(files)}
        start = time.perf_counter()
        with self._lock:
            reply, note = self._request(payload, timeout + cfg.grace_s)
            self.busy_s += time.perf_counter() - start
        if reply is None:
            return RunResult.lost(note, time.perf_counter() - start)
        if not reply.get("ok"):
            return RunResult(status=RunStatus.ERROR, stderr=str(reply.get("error", "")), note="executor error",
                             wall_s=time.perf_counter() - start)
        notes = "; ".join(n for n in (note, reply.get("note", "")) if n)
        return RunResult(status=RunStatus(reply["status"]), stdout=reply.get("stdout", ""),
                         stderr=reply.get("stderr", ""), exit_code=reply.get("exit_code"),
                         wall_s=float(reply.get("wall_s", 0.0)), note=notes)

    async def arun(self, code: str, *, mode: RunMode = "python", stdin: str | None = None,
                   timeout: float | None = None, files: dict[str, bytes | str] | None = None) -> RunResult:
        """Async :meth:`run` (runs in one of the pool's call threads, so the event loop stays free)."""
        call = functools.partial(self.run, code, mode=mode, stdin=stdin, timeout=timeout, files=files)
        return await self._pool._in_thread(call)

    # -- files ----------------------------------------------------------------------------------
    def put_file(self, path: str, data: bytes | str, mode: int | None = None) -> FileResult:
        """Write a file under the work directory (as the sandbox user)."""
        raw = data.encode() if isinstance(data, str) else data
        payload = {"op": "put", "path": path, "data": base64.b64encode(raw).decode(), "mode": mode}
        return self._file(payload)

    def get_file(self, path: str, max_bytes: int | None = None) -> FileResult:
        """Read a file under the work directory (as the sandbox user)."""
        return self._file({"op": "get", "path": path, "max_bytes": max_bytes or (64 << 20)})

    def _file(self, payload: dict[str, Any]) -> FileResult:
        start = time.perf_counter()
        with self._lock:
            reply, note = self._request(payload, 30.0 + self._pool.config.grace_s)
            self.busy_s += time.perf_counter() - start
        if reply is None:
            return FileResult(ok=False, error=f"sandbox_lost: {note}")
        res = reply.get("file") or {"ok": False, "error": reply.get("error", "file operation failed")}
        if not res.get("ok"):
            return FileResult(ok=False, error=str(res.get("error", "")))
        return FileResult(ok=True, data=base64.b64decode(res.get("data", "")))

    # -- life-cycle -----------------------------------------------------------------------------
    def reset(self) -> bool:
        """Kill every process of this session and wipe its files; True when verified clean."""
        with self._lock:
            reply, _ = self._request({"op": "reset"}, self._pool.config.grace_s + 10)
        return bool(reply and reply.get("clean"))

    def close(self) -> None:
        """Return the session to the pool (reset first; a session that is not clean replaces its host)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            host, conn, self._host, self._conn = self._host, self._conn, None, None
        if host is not None:
            self._pool._give_back(host, conn)

    async def aclose(self) -> None:
        await self._pool._in_thread(self.close)

    def __enter__(self) -> ExecutorSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

