"""Sandbox pools opened on demand, one per distinct config, and closed together.

A :class:`SandboxPools` holds the pools a set of environments shares: hold one (``with
SandboxPools() as pools: ...``) to bound their lifetime, or let environments use
:data:`DEFAULT_POOLS`, the process-wide holder behind :func:`shared_pool`, closed at interpreter
exit. Environments that open a sandbox per episode (see
:class:`toolgym.envs.sandbox_tools.SandboxResources`) take theirs from one of these.
"""

from __future__ import annotations

import atexit
import threading

from toolgym.errors import SandboxError
from toolgym.sandboxes.config import SandboxConfig
from toolgym.sandboxes.factory import open_sandbox_pool
from toolgym.sandboxes.pool import ExecutorPool


class SandboxPools:
    """One :class:`ExecutorPool` per distinct :class:`SandboxConfig`, opened on first use; thread-safe.

    :meth:`close` stops every pool it opened and refuses later :meth:`get` calls with a
    :class:`~toolgym.errors.SandboxError`; :meth:`clear` stops them but keeps the holder usable.

    Example:
        >>> config = SandboxConfig(backend="local", pool_size=0)  # no host starts before an acquire
        >>> with SandboxPools() as pools:
        ...     pool = pools.get(config)
        ...     pools.get(config) is pool, len(pools)
        (True, 1)
        >>> pool.closed, len(pools)
        (True, 0)
        >>> pools.get(config)
        Traceback (most recent call last):
        ...
        toolgym.errors.SandboxError: these sandbox pools are closed (SandboxPools.close() was called)
    """

    def __init__(self) -> None:
        self._pools: dict[str, ExecutorPool] = {}
        # Opening a pool happens under the lock too: two callers asking for one config get one pool.
        self._lock = threading.Lock()
        self._closed = False

    def get(self, config: SandboxConfig | None = None) -> ExecutorPool:
        """The pool for ``config`` (default :class:`SandboxConfig`), opened if this holder has none yet.

        Raises:
            SandboxError: The holder is closed, or the pool cannot be opened.
        """
        config = config or SandboxConfig()
        key = repr(config)  # configs are dataclasses of plain values: equal configs share a pool
        with self._lock:
            if self._closed:
                raise SandboxError("these sandbox pools are closed (SandboxPools.close() was called)")
            pool = self._pools.get(key)
            if pool is None or pool.closed:  # a pool its user closed is replaced, not handed out
                pool = self._pools[key] = open_sandbox_pool(config)
            return pool

    def clear(self) -> None:
        """Close every pool opened so far; later :meth:`get` calls open fresh ones."""
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()

    def close(self) -> None:
        """Close every pool and refuse later :meth:`get` calls; idempotent."""
        with self._lock:
            self._closed = True
        self.clear()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __len__(self) -> int:
        """How many pools are open."""
        with self._lock:
            return len(self._pools)

    def __enter__(self) -> SandboxPools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


DEFAULT_POOLS = SandboxPools()
"""The process-wide pools behind :func:`shared_pool`; closed at interpreter exit."""
atexit.register(DEFAULT_POOLS.close)


def shared_pool(config: SandboxConfig | None = None) -> ExecutorPool:
    """The :data:`DEFAULT_POOLS` pool for ``config``: one per distinct config in this process."""
    return DEFAULT_POOLS.get(config)


def close_shared_pools() -> None:
    """Close every :data:`DEFAULT_POOLS` pool (they reopen on the next :func:`shared_pool` call)."""
    DEFAULT_POOLS.clear()
