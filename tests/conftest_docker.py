"""Sandbox fixtures shared by the sandbox tests (import the fixtures you use from this module).

Docker tests must run, never skip, when ``CI=true``: without an engine they fail with a message
that says how to get one. Outside CI they skip when no engine answers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from toolgym.sandboxes import ExecutorPool, open_sandbox_pool
from toolgym.sandboxes.testing import require_docker, small_config

__all__ = ["any_pool", "docker_pool", "local_pool", "open_pool", "require_docker", "small_config"]


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
