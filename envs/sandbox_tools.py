"""Sandbox tools any environment can offer: ``python`` (stateful per episode) and ``shell``.

Both take a hidden ``sandbox`` argument: the environment puts the episode's sandbox session in
``state.resources["sandbox"]`` (see :class:`SandboxResources`) and the model never sees it. The
tools are async, so an episode's event loop stays free while code runs; what the model reads is
the run's output followed by a status line when the run did not end normally.
"""

from __future__ import annotations

from typing import Any

from toolgym.envs.tools import Tool, tool
from toolgym.sandboxes.config import SandboxConfig
from toolgym.sandboxes.pool import ExecutorPool, ExecutorSandbox
from toolgym.sandboxes.shared import DEFAULT_POOLS, SandboxPools, close_shared_pools, shared_pool

__all__ = ["MAX_RESULT_CHARS", "SANDBOX_TOOLS", "SandboxResources", "TOOL_TIMEOUT_S", "close_shared_pools", "python",
           "shared_pool", "shell", "used_python"]  # the pools live in toolgym.sandboxes.shared (re-exported here)

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

class SandboxResources:
    """Mixin for a ``ToolEnv``: one sandbox session per episode in ``state.resources["sandbox"]``.

    Sessions come from ``sandbox_pool`` when set (an open pool), otherwise from the
    ``sandbox_config`` pool of ``sandbox_pools`` (a :class:`SandboxPools` the user holds and
    closes) or, when that is unset too, of the process-wide
    :data:`toolgym.sandboxes.DEFAULT_POOLS`. Once the holder is closed, an episode start raises
    :class:`~toolgym.errors.SandboxError`.
    """

    sandbox_config: SandboxConfig | None = None
    sandbox_pool: ExecutorPool | None = None
    sandbox_pools: SandboxPools | None = None

    def _pool(self) -> ExecutorPool:
        if self.sandbox_pool is not None:
            return self.sandbox_pool
        # Asked every episode (a dict lookup), not remembered: a closed holder then fails loudly
        # and a cleared one (close_shared_pools) reopens, instead of a dead pool being reused.
        pools = DEFAULT_POOLS if self.sandbox_pools is None else self.sandbox_pools
        return pools.get(self.sandbox_config)

    def __getstate__(self) -> dict[str, Any]:
        # Pools are live processes and connections: a copy takes its pool from DEFAULT_POOLS by config.
        return {**super().__getstate__(), "sandbox_pool": None, "sandbox_pools": None}  # type: ignore[misc]

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
