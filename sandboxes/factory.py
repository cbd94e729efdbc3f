"""Backend selection: Docker when an engine answers, the local fallback otherwise."""

from __future__ import annotations

import logging
import os

from toolgym.errors import SandboxError
from toolgym.sandboxes.config import SandboxConfig
from toolgym.sandboxes.pool import ExecutorPool

log = logging.getLogger(__name__)


def docker_available() -> bool:
    """Whether a Docker engine answers a ping."""
    from toolgym.sandboxes.docker_backend import docker_client

    return docker_client(timeout=3.0) is not None


NO_ISOLATION = ("no isolated sandbox backend here: no Docker engine answers{docker_why} and bubblewrap is "
                "not usable{bwrap_why}. Get isolation with `bash .ci/docker-up.sh` (as root: installs and starts "
                "Docker, builds the image) or `apt-get install bubblewrap`; for trusted code only, "
                "sandbox.backend=local-unisolated runs it with no isolation at all")


def select_backend(config: SandboxConfig | None = None) -> str:
    """The backend this config runs on: ``auto`` probes Docker, then bubblewrap, else raises.

    ``auto`` never picks ``local-unisolated``: without an isolated backend it raises a
    :class:`SandboxError` that says how to get one.

    Example:
        >>> select_backend(SandboxConfig(backend="local-unisolated"))
        'local-unisolated'
    """
    config = (config or SandboxConfig()).check()
    if config.backend != "auto":
        return config.backend
    if docker_available():
        return "docker"
    from toolgym.sandboxes.local_backend import bwrap_path

    if bwrap_path() is not None:
        return "local"
    raise SandboxError(NO_ISOLATION.format(docker_why="", bwrap_why=""))


def open_sandbox_pool(config: SandboxConfig | None = None) -> ExecutorPool:
    """Open a sandbox pool on the selected backend and log which one.

    With ``backend="auto"`` and a Docker engine whose image is missing, this falls back to the
    bubblewrap-isolated local backend (and says so), or raises when bubblewrap is not usable either;
    with ``backend="docker"`` a missing image is an error.
    """
    config = (config or SandboxConfig()).check()
    backend = select_backend(config)
    if backend == "docker":
        from toolgym.sandboxes.docker_backend import open_docker_pool

        try:
            pool = open_docker_pool(config)
            log.info("sandbox backend: docker (image %s, runtime %s, pool %d, pid %d)", config.image,
                     config.runtime, config.pool_size, os.getpid())
            return pool
        except SandboxError as exc:
            if config.backend == "docker":
                raise
            from toolgym.sandboxes.local_backend import bwrap_path

            if bwrap_path() is None:
                raise SandboxError(NO_ISOLATION.format(docker_why=f" usably ({exc})", bwrap_why="")) from exc
            log.warning("sandbox backend: docker unusable (%s); using the local backend under bubblewrap", exc)
            backend = "local"
    from toolgym.sandboxes.local_backend import open_local_pool

    pool = open_local_pool(config, isolated=backend == "local")
    log.info("sandbox backend: %s", pool.backend)
    return pool
