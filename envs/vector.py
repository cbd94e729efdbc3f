"""Ready-first stepping of many environments at once.

``ToolEnvBatch`` runs each environment's turn as its own asyncio task and hands back whichever
episodes finished their turn first, so one slow tool call (a long sandbox run, a search server
hiccup) never stalls the episodes that are ready to generate again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from toolgym.envs.base import ToolEnv
from toolgym.errors import ErrorRecord


@dataclass
class StepResult:
    """One environment's completed turn (or the error that ended it)."""

    index: int
    observation: list[dict[str, Any]]
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    error: ErrorRecord | None = None


class ToolEnvBatch:
    """Step a batch of environments concurrently; collect results as they become ready.

    Example:
        >>> import asyncio, toolgym
        >>> envs = [toolgym.make("toolgym/Arithmetic-v0").unwrapped for _ in range(2)]
        >>> batch = ToolEnvBatch(envs)
        >>> _ = batch.reset(seeds=[0, 1])
        >>> async def go():
        ...     batch.submit(0, "Answer: 1")
        ...     batch.submit(1, "Answer: 2")
        ...     return sorted(r.index for r in await batch.gather())
        >>> asyncio.run(go())
        [0, 1]
    """

    def __init__(self, envs: Sequence[ToolEnv]):
        self.envs = list(envs)
        self._pending: dict[asyncio.Task[Any], int] = {}

    def reset(self, seeds: Sequence[int | None] | None = None,
              options: Sequence[dict[str, Any] | None] | None = None) -> list[tuple[list[dict[str, Any]], dict[str, Any]]]:
        seeds = list(seeds) if seeds is not None else [None] * len(self.envs)
        options = list(options) if options is not None else [None] * len(self.envs)
        return [env.reset(seed=s, options=o) for env, s, o in zip(self.envs, seeds, options, strict=True)]

    def submit(self, index: int, action: Any) -> None:
        """Start environment ``index``'s turn; its result arrives through :meth:`ready`."""
        if index in self._pending.values():
            raise RuntimeError(f"environment {index} already has a turn in flight")
        task = asyncio.get_running_loop().create_task(self.envs[index].astep(action))
        self._pending[task] = index

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def ready(self, timeout: float | None = None) -> list[StepResult]:
        """Wait until at least one submitted turn completes; return every completed one."""
        if not self._pending:
            return []
        done, _ = await asyncio.wait(self._pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        out = []
        for task in done:
            index = self._pending.pop(task)
            try:
                obs, reward, terminated, truncated, info = task.result()
                out.append(StepResult(index, obs, reward, terminated, truncated, info))
            except Exception as exc:  # the env broke: that episode ends with a typed error
                out.append(StepResult(index, [], 0.0, False, True, {}, ErrorRecord.from_exception(exc, "env")))
        return sorted(out, key=lambda r: r.index)

    async def gather(self) -> list[StepResult]:
        """Wait for every submitted turn."""
        out: list[StepResult] = []
        while self._pending:
            out.extend(await self.ready())
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()
