"""Backend selection: Docker when an engine answers, the local fallback otherwise."""

from __future__ import annotations

import logging
import os

from toolgym.errors import ConfigError, SandboxError
from toolgym.sandboxes.config import SandboxConfig
from toolgym.sandboxes.pool import ExecutorPool

log = logging.getLogger(__name__)


def docker_available() -> bool:
    """Whether a Docker engine answers a ping."""
    from toolgym.sandboxes.docker_backend import docker_client

    return docker_client(timeout=3.0) is not None


def select_backend(config: SandboxConfig | None = None) -> str:
    """``"docker"`` or ``"local"`` for this config (``auto`` probes the engine).

    Example:
        >>> select_backend(SandboxConfig(backend="local"))
        'local'
    """
    config = config or SandboxConfig()
    if config.backend in ("docker", "local"):
        return config.backend
    if config.backend != "auto":
        raise ConfigError(f"unknown sandbox backend {config.backend!r}; use auto, docker or local")
    return "docker" if docker_available() else "local"


def open_sandbox_pool(config: SandboxConfig | None = None) -> ExecutorPool:
    """Open a sandbox pool on the selected backend and log which one.

    With ``backend="auto"`` and a Docker engine whose image is missing, this falls back to the local
    backend (and says so); with ``backend="docker"`` that is an error.
    """
    config = config or SandboxConfig()
    backend = select_backend(config)
    if backend == "docker":
        from toolgym.sandboxes.docker_backend import open_docker_pool

        try:
            pool = open_docker_pool(config)
            log.info("sandbox backend: docker (image %s, pool %d, pid %d)", config.image, config.pool_size,
                     os.getpid())
            return pool
        except SandboxError as exc:
            if config.backend == "docker":
                raise
            log.warning("sandbox backend: docker unusable (%s); falling back to local", exc)
    from toolgym.sandboxes.local_backend import open_local_pool

    pool = open_local_pool(config)
    log.info("sandbox backend: local (%s)", pool.backend_impl.mode)
    return pool
