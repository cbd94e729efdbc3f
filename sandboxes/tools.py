"""Sandbox tools any environment can offer: ``python`` (stateful per episode) and ``shell``.

Both take a hidden ``sandbox`` argument: the environment puts the episode's sandbox session in
``state.resources["sandbox"]`` (see :class:`SandboxResources`) and the model never sees it. The
tools are async, so an episode's event loop stays free while code runs; what the model reads is
the run's output followed by a status line when the run did not end normally.
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from toolgym.envs.tools import Tool, tool
from toolgym.sandboxes.config import SandboxConfig
from toolgym.sandboxes.factory import open_sandbox_pool
from toolgym.sandboxes.pool import ExecutorPool, ExecutorSandbox

TOOL_TIMEOUT_S = 120.0  # outer bound; the sandbox enforces each run's own (shorter) timeout
MAX_RESULT_CHARS = 8_000


def _shown(text: str) -> str:
    return text if text.strip() else "(no output)"


@tool(hidden=("sandbox",), timeout=TOOL_TIMEOUT_S, max_result_chars=MAX_RESULT_CHARS)
async def python(code: str, sandbox: ExecutorSandbox) -> str:
    """Run Python code in this episode's persistent Python session and return what it printed.

    Variables, functions and imports persist between calls. Use print() to see values.

    Args:
        code: Python source to execute.
    """
    result = await sandbox.arun(code, mode="repl")
    return _shown(result.text(MAX_RESULT_CHARS))


@tool(hidden=("sandbox",), timeout=TOOL_TIMEOUT_S, max_result_chars=MAX_RESULT_CHARS)
async def shell(command: str, sandbox: ExecutorSandbox) -> str:
    """Run a shell command (/bin/sh) in this episode's work directory and return its output.

    Args:
        command: The command line, e.g. "ls -la".
    """
    result = await sandbox.arun(command, mode="shell")
    return _shown(result.text(MAX_RESULT_CHARS))


SANDBOX_TOOLS: tuple[Tool, ...] = (python, shell)

_POOLS: dict[str, ExecutorPool] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(config: SandboxConfig | None = None) -> ExecutorPool:
    """One pool per distinct config in this process, shared by every env instance; closed at exit."""
    config = config or SandboxConfig()
    key = repr(config)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = open_sandbox_pool(config)
        return pool


def close_shared_pools() -> None:
    """Close every shared pool (also runs at interpreter exit)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.close()


atexit.register(close_shared_pools)


class SandboxResources:
    """Mixin for a ``ToolEnv``: one sandbox session per episode in ``state.resources["sandbox"]``.

    Set ``sandbox_pool`` (an open pool) or ``sandbox_config`` (a shared pool is opened lazily).
    """

    sandbox_config: SandboxConfig | None = None
    sandbox_pool: ExecutorPool | None = None

    def _pool(self) -> ExecutorPool:
        if self.sandbox_pool is None:
            self.sandbox_pool = shared_pool(self.sandbox_config)
        return self.sandbox_pool

    def __getstate__(self) -> dict[str, Any]:
        # A pool is live processes and connections: a copy opens (or shares) its own from the config.
        return {**super().__getstate__(), "sandbox_pool": None}  # type: ignore[misc]

    def setup_episode(self, state: Any) -> None:
        state.resources["sandbox"] = self._pool().acquire()

    def teardown_episode(self, state: Any) -> None:
        sandbox = state.resources.pop("sandbox", None)
        if sandbox is not None:
            sandbox.close()


def used_python(tool_calls: list[Any]) -> float:
    """Metric (weight 0 in a rubric): 1.0 if the episode ran code with the python tool.

    Example:
        >>> from toolgym.envs.parsing import ToolCall
        >>> used_python([ToolCall(name="python", arguments={"code": "1"})]), used_python([])
        (1.0, 0.0)
    """
    return float(any(getattr(c, "name", None) == "python" for c in tool_calls))
