"""Fixtures shared by toolgym's tests: sandbox pools on each backend.

Docker tests must run, never skip, when ``CI=true``: without an engine they fail with a message
that says how to get one. Outside CI they skip when no engine answers. Helpers that are not
fixtures (``open_pool``, ``require_docker``, ``small_config``) are imported from
:mod:`toolgym.sandboxes.testing`: tests import installed packages, never each other.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from toolgym.sandboxes import ExecutorPool
from toolgym.sandboxes.testing import open_pool


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


BACKENDS = [pytest.param("docker", marks=pytest.mark.docker), pytest.param("gvisor", marks=pytest.mark.docker), "local",
            "local-process"]


@pytest.fixture(scope="module", params=BACKENDS)
def any_pool(request: pytest.FixtureRequest) -> Iterator[ExecutorPool]:
    pool = open_pool(request.param)
    yield pool
    pool.close()
