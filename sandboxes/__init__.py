"""Code sandboxes: a resident executor per container (or local process), pooled and hardened.

Open a pool with :func:`open_sandbox_pool` (Docker when an engine answers, else the executor
under bubblewrap, else a :class:`~toolgym.errors.SandboxError` that says how to get isolation;
``backend="local-unisolated"`` is the explicit opt-in for trusted code), acquire one :class:`ExecutorSandbox` per episode and run code in it::

    pool = open_sandbox_pool(SandboxConfig())
    with pool.acquire() as sandbox:
        result = sandbox.run("print(1)")          # fresh, isolated child process
        sandbox.run("x = 1", mode="repl")         # stateful Python session
        sandbox.run("ls -la", mode="shell")       # shell command
    pool.close()

Environments share one pool per config through a :class:`SandboxPools` holder: one of their own
(``with SandboxPools() as pools: ...``) or :data:`DEFAULT_POOLS`, the process-wide one behind
:func:`shared_pool`. The ``python`` and ``shell`` tools and the per-episode mixin are in
:mod:`toolgym.envs.sandbox_tools`.
"""

from __future__ import annotations

from toolgym.sandboxes.config import BACKENDS, DEFAULT_IMAGE, RUNTIMES, SandboxConfig
from toolgym.sandboxes.factory import docker_available, open_sandbox_pool, select_backend
from toolgym.sandboxes.pool import ExecutorPool, ExecutorSandbox
from toolgym.sandboxes.protocol import (
    FileResult,
    RunMode,
    RunResult,
    RunStatus,
    Sandbox,
    SandboxInfo,
    SandboxPool,
)
from toolgym.sandboxes.shared import DEFAULT_POOLS, SandboxPools, close_shared_pools, shared_pool

__all__ = [
    "BACKENDS", "RUNTIMES", "DEFAULT_IMAGE", "DEFAULT_POOLS", "ExecutorPool", "ExecutorSandbox", "FileResult", "RunMode", "RunResult",
    "RunStatus", "Sandbox", "SandboxConfig", "SandboxInfo", "SandboxPool", "SandboxPools", "close_shared_pools",
    "docker_available", "open_sandbox_pool", "select_backend", "shared_pool",
]
