"""Sandbox fixtures shared by the sandbox tests (import the fixtures you use from this module).

Docker tests must run, never skip, when ``CI=true``: without an engine they fail with a message
that says how to get one. Outside CI they skip when no engine answers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from toolgym.sandboxes import ExecutorPool, SandboxConfig, docker_available, open_sandbox_pool


def require_docker() -> None:
    """Fail (CI) or skip (elsewhere) when no Docker engine answers."""
    if docker_available():
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("CI=true but no Docker engine answers: run `bash .ci/docker-up.sh` (as root) first")
    pytest.skip("no Docker engine answers (with CI=true this is a failure)")


def small_config(backend: str, **overrides: object) -> SandboxConfig:
    """Limits small enough for fast tests on a busy 2-core machine."""
    base = dict(backend=backend, pool_size=2, max_hosts=8, sessions_per_host=1, memory_mb=256,
                run_memory_mb=192, timeout_s=5.0, grace_s=5.0, output_limit_bytes=64 * 1024, workdir_mb=32,
                file_size_mb=8, orphan_grace_s=10.0)
    base.update(overrides)
    return SandboxConfig(**base)  # type: ignore[arg-type]


def open_pool(backend: str, **overrides: object) -> ExecutorPool:
    """Open a test pool; ``"local-process"`` is the local backend without bubblewrap."""
    if backend == "docker":
        require_docker()
    if backend == "local-process":
        backend, overrides = "local", {"local_use_bwrap": False, **overrides}
    pool = open_sandbox_pool(small_config(backend, **overrides))
    assert pool.backend == backend
    pool.wait_ready()
    return pool


@pytest.fixture(scope="module")
def docker_pool() -> Iterator[ExecutorPool]:
    pool = open_pool("docker")
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def local_pool() -> Iterator[ExecutorPool]:
    pool = open_pool("local")
    yield pool
    pool.close()


BACKENDS = [pytest.param("docker", marks=pytest.mark.docker), "local", "local-process"]


@pytest.fixture(scope="module", params=BACKENDS)
def any_pool(request: pytest.FixtureRequest) -> Iterator[ExecutorPool]:
    pool = open_pool(request.param)
    yield pool
    pool.close()
