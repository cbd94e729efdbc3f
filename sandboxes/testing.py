"""Helpers for tests that use sandboxes (toolgym's own and environment packs').

``require_docker()`` makes a Docker test fail under ``CI=true`` and skip elsewhere when no engine
answers, so CI never passes by skipping; ``small_config()`` sizes a pool for fast tests on a
small machine and ``open_pool()`` opens a ready one. Needs pytest (imported when called, so
importing this module costs nothing). toolgym's own pool fixtures are in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from toolgym.sandboxes.config import SandboxConfig
from toolgym.sandboxes.factory import docker_available, open_sandbox_pool
from toolgym.sandboxes.pool import ExecutorPool


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``CI`` is set to a true value (``1``, ``true``, ``yes``) in ``environ`` (default: ours).

    Example:
        >>> in_ci({"CI": "true"}), in_ci({"CI": "0"}), in_ci({})
        (True, False, False)
    """
    return (os.environ if environ is None else environ).get("CI", "").lower() in ("1", "true", "yes")


def require_docker() -> None:
    """Return when a Docker engine answers; otherwise fail (under ``CI=true``) or skip the test."""
    import pytest

    if docker_available():
        return
    if in_ci():
        pytest.fail("CI=true but no Docker engine answers: run `bash .ci/docker-up.sh` (as root) first")
    pytest.skip("no Docker engine answers (with CI=true this is a failure)")


def require_runsc() -> None:
    """Return when the Docker engine has gVisor's ``runsc`` runtime; otherwise fail (``CI=true``) or skip."""
    import pytest

    require_docker()
    import docker

    client = docker.from_env()
    try:
        runtimes = client.info().get("Runtimes") or {}
    finally:
        client.close()
    if "runsc" in runtimes:
        return
    msg = "the Docker engine has no runsc runtime: run `bash .ci/docker-up.sh` (as root) to install and register gVisor"
    if in_ci():
        pytest.fail(f"CI=true but {msg}")
    pytest.skip(msg)


def small_config(backend: str, **overrides: Any) -> SandboxConfig:
    """Limits small enough for fast tests on a busy 2-core machine.

    Example:
        >>> small_config("local", timeout_s=2.0).timeout_s
        2.0
    """
    base: dict[str, Any] = dict(backend=backend, pool_size=2, max_hosts=8, sessions_per_host=1, memory_mb=256,
                                run_memory_mb=192, timeout_s=5.0, grace_s=5.0, output_limit_bytes=64 * 1024,
                                workdir_mb=32, file_size_mb=8, orphan_grace_s=10.0)
    base.update(overrides)
    return SandboxConfig(**base)


def open_pool(backend: str, **overrides: Any) -> ExecutorPool:
    """A ready test pool (:func:`small_config` limits); ``"local-process"`` is ``"local-unisolated"`` (no bubblewrap).

    ``"docker"`` calls :func:`require_docker` first, so it skips (or fails under ``CI=true``) without an engine;
    ``"gvisor"`` is Docker with ``runtime="runsc"`` (after :func:`require_runsc`).
    """
    if backend == "docker":
        require_docker()
    if backend == "gvisor":
        require_runsc()
        backend, overrides = "docker", {"runtime": "runsc", **overrides}
    if backend == "local-process":
        backend = "local-unisolated"
    if overrides.get("sessions_per_host", 1) > 1:
        overrides = {"share_hosts": True, **overrides}  # toolgym's own test code is trusted
    pool = open_sandbox_pool(small_config(backend, **overrides))
    assert pool.backend == backend
    pool.wait_ready()
    return pool
