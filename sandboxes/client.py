"""Host side of the executor channel: length-prefixed JSON frames over a unix socket.

One :class:`ExecutorConnection` is one executor session (the executor binds a work directory and
uids to the connection). Reads carry a deadline: an executor that does not answer within a run's
timeout plus a grace period is declared lost, which is the host-side watchdog.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

from toolgym.errors import SandboxError

EXECUTOR_SOURCE = Path(__file__).with_name("executor.py")
_LEN = struct.Struct(">I")
MAX_REPLY = 512 * 1024 * 1024


class ExecutorLost(SandboxError):
    """The executor stopped answering, closed the channel, or its socket is gone."""


class ExecutorConnection:
    """A blocking request/response channel to one executor. Not thread-safe: callers hold a lock."""

    def __init__(self, socket_path: str, connect_timeout: float = 5.0):
        self.socket_path = socket_path
        self._sock: socket.socket | None = None
        deadline = time.monotonic() + connect_timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(socket_path)
                self._sock = sock
                return
            except OSError as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise ExecutorLost(f"cannot connect to executor at {socket_path}: {exc}") from exc
                time.sleep(0.01)

    def request(self, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one request and wait at most ``timeout`` seconds for its reply."""
        sock = self._sock
        if sock is None:
            raise ExecutorLost("connection closed")
        data = json.dumps(payload, separators=(",", ":")).encode()
        try:
            sock.settimeout(timeout)
            sock.sendall(_LEN.pack(len(data)) + data)
            (n,) = _LEN.unpack(self._read_exact(4))
            if n > MAX_REPLY:
                raise ExecutorLost(f"reply of {n} bytes exceeds the channel limit")
            return json.loads(self._read_exact(n))
        except TimeoutError as exc:
            self.close()
            raise ExecutorLost(f"executor did not answer within {timeout:.1f}s") from exc
        except (OSError, ValueError) as exc:
            self.close()
            raise ExecutorLost(f"executor channel failed: {type(exc).__name__}: {exc}") from exc

    def _read_exact(self, n: int) -> bytes:
        assert self._sock is not None
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise ExecutorLost("executor closed the channel")
            buf += chunk
        return bytes(buf)

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
