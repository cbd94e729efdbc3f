"""What a reward-maximising policy would try between episodes and inside the executor's protocol.

Nothing an episode makes reaches the next one on the same host and slot; a run's result cannot be
forged through the channels its code can write; those channels are bounded; the REPL stays sound
(streams, CPU, threads); no silent unisolated fallback; packing is opt-in; the network is this
machine's loopback only, reached through a listener the test opens itself.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from toolgym.errors import ConfigError, SandboxError
from toolgym.sandboxes import ExecutorPool, RunStatus, SandboxConfig, factory, local_backend
from toolgym.sandboxes.testing import open_pool

S = RunStatus
ISOLATED = [pytest.param("docker", marks=pytest.mark.docker), pytest.param("gvisor", marks=pytest.mark.docker), "local"]


@pytest.fixture(scope="module", params=ISOLATED)
def one_slot(request: pytest.FixtureRequest) -> Iterator[ExecutorPool]:
    """One host with one slot: the next episode gets the same container (or process) and uids."""
    pool = open_pool(request.param, pool_size=1, max_hosts=1)
    yield pool
    pool.close()


# ------------------------------------------------------------------------------- clean episodes
LEAVE_BEHIND = r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
KEY = 0x7461 + {off}
made = [libc.shmget(KEY, 4096, 0o1000 | 0o600) >= 0, libc.msgget(KEY, 0o1000 | 0o600) >= 0,
        libc.semget(KEY, 1, 0o1000 | 0o600) >= 0]
for path in ('/tmp/left{off}', '/dev/shm/left{off}', '/dev/mqueue/left{off}'):
    if not os.path.isdir(os.path.dirname(path)):  # gVisor mounts no /dev/mqueue: nothing to leave there
        continue
    open(path, 'w').close()
    made.append(path)
print(made)
'''
LOOK_FOR_IT = r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
KEY = 0x7461 + {off}
print([libc.shmget(KEY, 0, 0), libc.msgget(KEY, 0), libc.semget(KEY, 0, 0)],
      [p for p in ('/tmp/left{off}', '/dev/shm/left{off}', '/dev/mqueue/left{off}') if os.path.exists(p)])
'''
LISTEN = (
    "import socket\n"
    "tcp = socket.socket(); tcp.bind(('127.0.0.1', 0)); tcp.listen(); PORT = tcp.getsockname()[1]\n"
    "uds = socket.socket(socket.AF_UNIX); uds.bind('\\0toolgym-left'); uds.listen()\n"
    "print(PORT)"
)
CONNECT = (
    "import socket\n"
    "for family, addr in ((socket.AF_INET, ('127.0.0.1', {port})), (socket.AF_UNIX, '\\0toolgym-left')):\n"
    "    s = socket.socket(family)\n"
    "    try:\n"
    "        s.connect(addr); print('reached', addr)\n"
    "    except OSError as e:\n"
    "        print(type(e).__name__)\n"
)
MY_OTHER_PROCESSES = (
    "import os\nme = os.getpid()\n"
    "print(sum(1 for p in os.listdir('/proc') if p.isdigit() and int(p) != me\n"
    "          and os.stat('/proc/' + p).st_uid == os.getuid()))"
)


def test_nothing_an_episode_makes_reaches_the_next(one_slot):
    """SysV shared memory, message queues and semaphores, POSIX shm and mqueues, /tmp files, a
    listening TCP socket and an abstract unix socket, made in episode 1 from stateless runs and from
    the REPL (two uids), are gone for episode 2 on the same host and slot."""
    with one_slot.acquire() as first:
        where = (first.info.host_id, first.info.slot)
        for mode, off in (("python", 0), ("repl", 1)):
            made = first.run(LEAVE_BEHIND.format(off=off), mode=mode)
            assert made.ok and made.stdout.startswith("[True, True, True,"), made
        listening = first.run(LISTEN, mode="repl")
        assert listening.ok, listening
        port = int(listening.stdout)
        held = first.run(CONNECT.format(port=port))  # the REPL holds both sockets between cells
        assert held.stdout.count("reached") == 2, held
    with one_slot.acquire() as second:
        assert (second.info.host_id, second.info.slot) == where
        for mode, off in (("python", 0), ("repl", 1)):
            seen = second.run(LOOK_FOR_IT.format(off=off), mode=mode)
            assert seen.ok and seen.stdout == "[-1, -1, -1] []\n", seen
        gone = second.run(CONNECT.format(port=port))
        assert gone.ok and "reached" not in gone.stdout, gone
        for mode in ("python", "repl"):
            others = second.run(MY_OTHER_PROCESSES, mode=mode)
            assert others.ok and others.stdout == "0\n", others


# ---------------------------------------------------------------------------- forged results
def _report(exit_code: int, kind: str) -> str:
    quoted = "null" if kind == "null" else f'"{kind}"'
    body = f'{{"exit": {exit_code}, "kind": {quoted}}}'
    return f"import os, struct\nmsg = {body!r}.encode()\nos.write(3, struct.pack('>I', len(msg)) + msg)\n"


def test_a_forged_run_report_decides_nothing(one_slot):
    """The status comes from waitpid and the executor's timer, not from what the code writes on fd 3."""
    with one_slot.acquire() as sb:
        spin = sb.run(_report(0, "null") + "while True: pass\n", timeout=1.0)
        assert spin.status is S.TIMEOUT, spin
        claims_oom = sb.run(_report(0, "oom"))
        assert claims_oom.status is S.OK and claims_oom.exit_code == 0, claims_oom
        claims_ok = sb.run(_report(0, "null") + "raise SystemExit(3)\n")
        assert claims_ok.status is S.ERROR and claims_ok.exit_code == 3, claims_ok
        assert sb.run("print('still fine')").stdout == "still fine\n"


def test_a_forged_cell_report_cannot_end_a_running_cell(one_slot):
    """A cell's report on its channel ends it only once its process stopped: spinning after a forged
    report is a timeout; the REPL's report channel flooded with junk is a typed error and a restart."""
    with one_slot.acquire() as sb:
        assert sb.run("x = 41", mode="repl").ok
        forged = ("import os, struct\nmsg = b'{\"exit\": 0, \"kind\": null}'\n"
                  "for fd in range(3, 12):\n"
                  "    try:\n        os.write(fd, struct.pack('>I', len(msg)) + msg)\n"
                  "    except OSError:\n        pass\n"
                  "while True: pass\n")
        spin = sb.run(forged, mode="repl", timeout=1.0)
        assert spin.status in (S.TIMEOUT, S.ERROR), spin
        junk = ("import os\nfor fd in range(3, 12):\n    try:\n        os.write(fd, b'\\xff' * 4096)\n"
                "    except OSError:\n        pass\nwhile True: pass\n")
        flooded = sb.run(junk, mode="repl", timeout=2.0)
        assert flooded.status in (S.ERROR, S.TIMEOUT) and "restarted" in flooded.note, flooded
        fresh = sb.run("print('x' in dir())", mode="repl")
        assert fresh.ok and fresh.stdout == "False\n", fresh


def _executor_rss_kb(pool: ExecutorPool, host_id: str) -> int:
    from toolgym.sandboxes.client import ExecutorConnection

    path = dict(pool.host_connections())[host_id]
    conn = ExecutorConnection(path)
    try:
        return int(conn.request({"op": "ping"}, timeout=10)["rss_kb"])
    finally:
        conn.close()


def test_a_flooded_status_channel_keeps_the_executor_bounded(one_slot):
    """A huge length header and megabytes of junk on fd 3: the run times out, the executor's memory
    does not grow with what was written and nothing is logged per frame."""
    flood = ("import os\nhead = (0x0fffffff).to_bytes(4, 'big')\n"
             "while True:\n    os.write(3, head + b'x' * 65536)\n")
    with one_slot.acquire() as sb:
        before = _executor_rss_kb(one_slot, sb.info.host_id)
        for _ in range(3):
            res = sb.run(flood, timeout=1.5)
            assert res.status is S.TIMEOUT, res
        after = _executor_rss_kb(one_slot, sb.info.host_id)
        assert 0 < before and after - before < 8 * 1024, (before, after)
        assert sb.run("print(1)").stdout == "1\n"
        if one_slot.backend == "docker":
            import docker

            handle = next(h for h in one_slot.handles() if h.host_id == sb.info.host_id)
            logs = docker.from_env().api.logs(handle.data["container_id"])
            assert len(logs) < 4096, logs[-2000:]


# ----------------------------------------------------------------------------------- the REPL
def test_a_cell_that_closes_its_stdout_does_not_silence_the_next(one_slot):
    with one_slot.acquire() as sb:
        closed = sb.run("import os\nkeep = 7\nos.close(1)\nos.close(2)\nprint('into the void')", mode="repl")
        assert closed.status is S.OK, closed
        back = sb.run("print('back', keep)", mode="repl")
        assert back.ok and back.stdout == "back 7\n", back


def test_the_repl_cpu_limit_is_per_cell(one_slot):
    """Four cells of 1.6 s CPU each with a 3 s timeout (a 5 s CPU limit): a lifetime limit would kill
    the fourth and lose the session; a per-cell one keeps it."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.6:\n    pass\nn = n + 1\nprint(n)"
    with one_slot.acquire() as sb:
        assert sb.run("n = 0", mode="repl").ok
        for i in range(1, 5):
            res = sb.run(burn, mode="repl", timeout=3.0)
            assert res.ok and res.stdout == f"{i}\n", (i, res)
        over = sb.run("while True:\n    pass", mode="repl", timeout=1.0)
        assert over.status is S.TIMEOUT, over


def test_threads_a_cell_starts_are_paused_between_cells_and_reported(one_slot):
    ticker = ("import threading, time\n"
              "def tick():\n"
              "    while True:\n"
              "        with open('ticks', 'a') as f:\n"
              "            f.write(f'{time.time()}\\n')\n"
              "        time.sleep(0.01)\n"
              "threading.Thread(target=tick, daemon=True).start()\n"
              "time.sleep(0.1)")
    gaps = ("time.sleep(0.1)  # let the ticker tick again\n"
            "ticks = [float(t) for t in open('ticks').read().split()]\n"
            "print(max(b - a for a, b in zip(ticks, ticks[1:])) > 0.5)")
    with one_slot.acquire() as sb:
        started = sb.run(ticker, mode="repl")
        assert started.ok and "thread" in started.note, started
        time.sleep(1.0)  # no cell runs: the ticker must not either
        res = sb.run(gaps, mode="repl")
        assert res.ok and res.stdout == "True\n", res


# ---------------------------------------------------------------------------------- selection
def test_auto_never_falls_back_to_an_unisolated_backend(monkeypatch):
    monkeypatch.setattr(factory, "docker_available", lambda: False)
    monkeypatch.setattr(local_backend, "bwrap_problem", lambda: "bwrap is not installed")
    with pytest.raises(SandboxError, match="bubblewrap") as err:
        factory.select_backend(SandboxConfig(backend="auto"))
    assert "local-unisolated" in str(err.value) and "docker-up" in str(err.value)
    with pytest.raises(SandboxError, match="needs bubblewrap"):
        factory.open_sandbox_pool(SandboxConfig(backend="local", pool_size=0))
    assert factory.select_backend(SandboxConfig(backend="local-unisolated")) == "local-unisolated"


def test_auto_picks_bubblewrap_when_docker_is_absent(monkeypatch):
    if local_backend.bwrap_problem():
        pytest.skip(f"bubblewrap unusable here: {local_backend.bwrap_problem()}")
    monkeypatch.setattr(factory, "docker_available", lambda: False)
    assert factory.select_backend(SandboxConfig(backend="auto")) == "local"


def test_packing_episodes_into_one_host_is_an_explicit_opt_in():
    with pytest.raises(ConfigError, match="share_hosts"):
        SandboxConfig(sessions_per_host=4).check()
    with pytest.raises(ConfigError, match="share_hosts"):
        factory.open_sandbox_pool(SandboxConfig(backend="local-unisolated", sessions_per_host=2))
    assert SandboxConfig(sessions_per_host=4, share_hosts=True).check().sessions_per_host == 4


# ----------------------------------------------------------------------------------- network
REACH = ("import socket\ns = socket.socket()\ns.settimeout(2)\n"
         "try:\n    s.connect(('127.0.0.1', {port})); print('reached')\n"
         "except OSError as e:\n    print(type(e).__name__)\n")
PROC_NET_DEV = "print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').read().splitlines()[2:]))"


def test_a_listener_on_the_hosts_loopback_is_unreachable(one_slot):
    """The test opens a listener on this machine's 127.0.0.1; the sandbox's loopback is its own."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        with one_slot.acquire() as sb:
            res = sb.run(REACH.format(port=port), timeout=5)
            ifaces = sb.run(PROC_NET_DEV)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing arrived
    assert res.ok and "reached" not in res.stdout, res
    assert ifaces.ok and ifaces.stdout == "['lo']\n", ifaces


# ------------------------------------------------------------------------ the socket directory
def test_a_socket_directory_someone_else_prepared_is_refused(tmp_path, monkeypatch):
    """Another local user could pre-create the well-known socket directory (or a symlink there)."""
    import os

    from toolgym.sandboxes import docker_backend

    monkeypatch.setattr(docker_backend.tempfile, "gettempdir", lambda: str(tmp_path))
    root = tmp_path / f"toolgym-sandbox-{os.getuid()}"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    with pytest.raises(SandboxError, match="has mode 0755"):
        docker_backend.private_run_root()
    root.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    root.symlink_to(elsewhere)
    with pytest.raises(SandboxError, match="is a symlink"):
        docker_backend.private_run_root()
    root.unlink()
    assert docker_backend.private_run_root() == root  # made fresh: ours, 0700
    assert (root.stat().st_mode & 0o777) == 0o700
