"""Running a coroutine to completion from synchronous code, even inside a running event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_in_new_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh event loop in a private thread and return its result.

    For synchronous APIs called from inside a running loop (a notebook, an async trainer), where
    ``asyncio.run`` is not allowed. Exceptions are re-raised in the caller's thread.

    Example:
        >>> async def two():
        ...     return 2
        >>> run_in_new_thread(two())
        2
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised below, in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="toolgym-run-sync")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
