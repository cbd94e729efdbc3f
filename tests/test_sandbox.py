"""Core behaviour of the sandbox: runs, REPL sessions, shell, files, reset, pool hygiene, concurrency."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from toolgym.sandboxes import RunResult, RunStatus, Sandbox, SandboxConfig, SandboxPool, select_backend
from toolgym.sandboxes.testing import open_pool, require_docker


def test_run_python_and_status(any_pool):
    with any_pool.acquire() as sb:
        assert isinstance(sb, Sandbox)
        ok = sb.run("print(6 * 7)")
        assert ok.status is RunStatus.OK and ok.stdout == "42\n" and ok.exit_code == 0
        err = sb.run("def f():\n    raise ValueError('boom')\nf()")
        assert err.status is RunStatus.ERROR and err.exit_code == 1
        assert "ValueError: boom" in err.stderr and "executor.py" not in err.stderr
        assert sb.run("import sys; sys.exit(3)").exit_code == 3
        assert sb.run("import sys; print(sys.stdin.read().upper())", stdin="abc").stdout == "ABC\n"
        files = sb.run("print(open('data/in.txt').read())", files={"data/in.txt": "hello"})
        assert files.stdout == "hello\n"


def test_each_run_is_a_fresh_process(any_pool):
    with any_pool.acquire() as sb:
        first = sb.run("import os; x = 1; print(os.getpid())")
        second = sb.run("import os; print(os.getpid(), 'x' in globals())")
        assert first.ok and second.ok
        assert second.stdout.split()[1] == "False"
        assert first.stdout.split()[0] != second.stdout.split()[0]


def test_repl_keeps_state_within_an_episode_only(any_pool):
    with any_pool.acquire() as a, any_pool.acquire() as b:
        assert a.run("total = 40", mode="repl").ok
        assert a.run("total += 2\nprint(total)", mode="repl").stdout == "42\n"
        other = b.run("print('total' in globals())", mode="repl")
        assert other.stdout == "False\n"
        # A crash in a cell is an error, but the session (and its variables) survive it.
        assert a.run("1 / 0", mode="repl").status is RunStatus.ERROR
        assert a.run("print(total)", mode="repl").stdout == "42\n"


def test_repl_timeout_restarts_the_session(any_pool):
    with any_pool.acquire() as sb:
        sb.run("keep = 1", mode="repl")
        slow = sb.run("while True: pass", mode="repl", timeout=0.5)
        assert slow.status is RunStatus.TIMEOUT and "restarted" in slow.note
        after = sb.run("print('keep' in globals())", mode="repl")
        assert after.ok and after.stdout == "False\n"


def test_shell_and_files(any_pool):
    with any_pool.acquire() as sb:
        res = sb.run("echo hi && echo oops >&2 && exit 4", mode="shell")
        assert res.stdout == "hi\n" and res.stderr == "oops\n" and res.exit_code == 4
        assert res.status is RunStatus.ERROR
        assert sb.put_file("sub/x.bin", b"\x00\x01binary").ok
        got = sb.get_file("sub/x.bin")
        assert got.ok and got.data == b"\x00\x01binary"
        assert sb.run("cat sub/x.bin | wc -c", mode="shell").stdout.strip() == "8"
        missing = sb.get_file("nope.txt")
        assert not missing.ok and "FileNotFoundError" in missing.error


def test_reset_and_reuse_give_a_clean_sandbox(any_pool):
    sb = any_pool.acquire()
    sb.put_file("secret.txt", "episode-1")
    sb.run("x = 1", mode="repl")
    assert sb.reset()
    assert sb.run("import os; print(os.listdir('.'))").stdout == "[]\n"
    assert sb.run("print('x' in globals())", mode="repl").stdout == "False\n"
    sb.put_file("secret.txt", "episode-1")
    sb.close()
    for _ in range(2):  # whichever session comes next sees none of it
        with any_pool.acquire() as nxt:
            assert nxt.run("import os; print(os.listdir('.'))").stdout == "[]\n"


def test_timeout_and_output_cap(any_pool):
    with any_pool.acquire() as sb:
        start = time.monotonic()
        res = sb.run("import time; time.sleep(60)", timeout=0.5)
        assert res.status is RunStatus.TIMEOUT
        assert time.monotonic() - start < 10
        flood = sb.run("print('y' * 10_000_000)")
        assert flood.status is RunStatus.OUTPUT_TRUNCATED
        assert len(flood.stdout) <= any_pool.config.output_limit_bytes
        assert sb.run("print('fine')").stdout == "fine\n"


def test_async_api(any_pool):
    async def episode(i: int) -> str:
        sb = await any_pool.aacquire()
        try:
            res = await sb.arun(f"print({i} * 2)", timeout=30)  # a loaded 2-core machine can take seconds
            assert res.ok, res
            return res.stdout.strip()
        finally:
            await sb.aclose()

    async def main() -> list[str]:
        return await asyncio.gather(*(episode(i) for i in range(4)))

    assert asyncio.run(main()) == ["0", "2", "4", "6"]


@pytest.mark.parametrize("backend", [pytest.param("docker", marks=pytest.mark.docker), "local"])
def test_slow_async_runs_do_not_stall_other_episodes(backend):
    pool = open_pool(backend, pool_size=1, max_hosts=1, sessions_per_host=16)
    finished: list[str] = []

    async def episode(name: str, code: str) -> None:
        sb = await pool.aacquire()
        try:
            res = await sb.arun(code, timeout=30)
            assert res.ok, res
            finished.append(name)
        finally:
            await sb.aclose()

    async def main() -> None:
        slow = [asyncio.create_task(episode(f"slow{i}", "import time; time.sleep(3)")) for i in range(12)]
        await asyncio.sleep(0.5)  # all slow runs are in flight before the quick one starts
        await episode("quick", "print(1)")
        await asyncio.gather(*slow)

    try:
        asyncio.run(main())
    finally:
        pool.close()
    assert finished[0] == "quick" and len(finished) == 13


def test_result_text_and_record():
    res = RunResult(status=RunStatus.TIMEOUT, stdout="partial", note="limit 1s")
    assert res.text().endswith("[timeout: limit 1s]")
    assert res.to_dict()["status"] == "timeout"
    assert RunResult(status=RunStatus.ERROR, stderr="E", exit_code=2).text() == "E\n[error (exit code 2)]"
    assert RunResult.lost("gone").status is RunStatus.SANDBOX_LOST


def test_select_backend_explicit_and_bad():
    assert select_backend(SandboxConfig(backend="local")) == "local"
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        select_backend(SandboxConfig(backend="podman"))  # type: ignore[arg-type]


def test_pools_satisfy_the_protocol(local_pool):
    assert isinstance(local_pool, SandboxPool)


@pytest.mark.docker
def test_docker_container_is_hardened(docker_pool):
    import docker

    handle = docker_pool.handles()[0]
    attrs = docker.from_env().api.inspect_container(handle.data["container_id"])
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["Memory"] == host["MemorySwap"] > 0 and host["PidsLimit"] > 0 and host["NanoCpus"] > 0
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"] and host["Init"] is True
    assert attrs["Config"]["Labels"]["toolgym.owner_pid"] == str(os.getpid())
    with docker_pool.acquire() as sb:
        who = sb.run("import os; print(os.getuid(), os.geteuid())").stdout.split()
        assert who[0] == who[1] and int(who[0]) >= 100_000


@pytest.mark.docker
def test_lost_container_gives_typed_result_then_recovers():
    pool = open_pool("docker")
    try:
        import docker

        sb = pool.acquire()
        sb.run("x = 1", mode="repl")
        cid = next(h.data["container_id"] for h in pool.handles() if h.host_id == sb.info.host_id)
        docker.from_env().api.kill(cid)
        lost = sb.run("print(1)")
        assert lost.status is RunStatus.SANDBOX_LOST
        again = sb.run("print('x' in globals())", mode="repl")
        assert again.ok and again.stdout == "False\n" and "replaced" in again.note
        sb.close()
    finally:
        pool.close()


def _containers_of(owner_pid: int, pool_id: str | None = None) -> list:
    import docker

    label = f"toolgym.pool={pool_id}" if pool_id else f"toolgym.owner_pid={owner_pid}"
    # The low-level call lists in one request (the high-level one races with removals).
    return docker.from_env().api.containers(all=True, filters={"label": label})


@pytest.mark.docker
def test_close_leaves_no_container():
    pool = open_pool("docker")
    pool.wait_ready()
    with pool.acquire() as sb:
        assert sb.run("print(1)").ok
    assert len(_containers_of(os.getpid(), pool.backend_impl.pool_id)) >= 2
    pool.close()
    assert _containers_of(os.getpid(), pool.backend_impl.pool_id) == []


@pytest.mark.docker
def test_sigkilled_owner_leaves_no_container():
    import docker

    require_docker()
    script = textwrap.dedent("""
        import time
        from toolgym.sandboxes import open_sandbox_pool
        from toolgym.sandboxes.testing import small_config
        pool = open_sandbox_pool(small_config("docker", orphan_grace_s=2.0))
        pool.wait_ready()
        sb = pool.acquire()
        sb.run("print(1)")
        print("ready", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert len(_containers_of(proc.pid)) >= 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Running executors notice their owner is gone and exit; their containers remove themselves.
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and [c for c in _containers_of(proc.pid) if c["State"] != "created"]:
        time.sleep(0.5)
    assert [c["Names"] for c in _containers_of(proc.pid) if c["State"] != "created"] == []
    # One created but never started (the owner died between create and start) is reaped at start-up.
    from toolgym.sandboxes.docker_backend import reap_orphans

    reap_orphans(docker.from_env())
    assert _containers_of(proc.pid) == []


@pytest.mark.docker
def test_startup_reaps_containers_of_dead_owners():
    import docker

    from toolgym.sandboxes.docker_backend import reap_orphans

    require_docker()
    client = docker.from_env()
    dead_pid = 2**22 - 3  # above any pid this machine hands out
    labels = {"toolgym.sandbox": "1", "toolgym.owner_pid": str(dead_pid), "toolgym.owner_start": "1",
              "toolgym.owner_host": __import__("socket").gethostname()}
    client.containers.create(SandboxConfig().image, ["sleep", "60"], labels=labels, network_mode="none")
    assert len(_containers_of(dead_pid)) == 1
    assert reap_orphans(client) >= 1
    assert _containers_of(dead_pid) == []


@pytest.mark.docker
def test_64_concurrent_episodes_on_a_small_pool():
    pool = open_pool("docker", pool_size=4, max_hosts=4, sessions_per_host=16, memory_mb=512, pids=512)

    async def episode(i: int) -> tuple[str, str]:
        sb = await pool.aacquire(timeout=120)
        try:
            one = await sb.arun(f"print(sum(range({i} + 1)))", timeout=30)
            await sb.arun(f"mine = {i}", mode="repl", timeout=30)
            two = await sb.arun("print(mine * 2)", mode="repl", timeout=30)
            return one.stdout.strip(), two.stdout.strip()
        finally:
            await sb.aclose()

    async def main() -> list[tuple[str, str]]:
        return await asyncio.gather(*(episode(i) for i in range(64)))

    try:
        results = asyncio.run(main())
    finally:
        pool.close()
    assert results == [(str(i * (i + 1) // 2), str(2 * i)) for i in range(64)]
