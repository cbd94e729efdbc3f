"""The sandbox contract: typed results and the ``Sandbox`` / ``SandboxPool`` protocols.

Every call on a sandbox returns a result record; none raises for anything the sandboxed code did
(infinite loops, crashes, floods) nor for a lost container: those are statuses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

RESULT_SCHEMA_VERSION = 1


class RunStatus(StrEnum):
    """How a run ended."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    OOM = "oom"
    KILLED = "killed"
    OUTPUT_TRUNCATED = "output_truncated"
    SANDBOX_LOST = "sandbox_lost"


@dataclass(frozen=True)
class RunResult:
    """What one run produced.

    Example:
        >>> r = RunResult(status=RunStatus.OK, stdout="1\\n", exit_code=0)
        >>> r.ok, r.text()
        (True, '1\\n')
    """

    status: RunStatus
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    wall_s: float = 0.0
    note: str = ""
    schema_version: int = RESULT_SCHEMA_VERSION

    @property
    def ok(self) -> bool:
        return self.status is RunStatus.OK

    def text(self, limit: int = 16_000) -> str:
        """Output as a model should see it: stdout, then stderr, then a status line when not ok."""
        parts = [self.stdout]
        if self.stderr:
            parts.append(self.stderr if not self.stdout or self.stdout.endswith("\n") else "\n" + self.stderr)
        if self.status is not RunStatus.OK:
            detail = f" (exit code {self.exit_code})" if self.status is RunStatus.ERROR else ""
            parts.append(f"\n[{self.status.value}{detail}{': ' + self.note if self.note else ''}]")
        out = "".join(parts)
        return out if len(out) <= limit else out[:limit] + f"\n[output cut at {limit} characters]"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def lost(cls, note: str, wall_s: float = 0.0) -> RunResult:
        return cls(status=RunStatus.SANDBOX_LOST, note=note, wall_s=wall_s)


@dataclass(frozen=True)
class FileResult:
    """Outcome of a file put/get; ``data`` holds the bytes read."""

    ok: bool
    data: bytes = b""
    error: str = ""
    schema_version: int = RESULT_SCHEMA_VERSION


RunMode = Literal["python", "repl", "shell"]


@dataclass
class SandboxInfo:
    """Where a sandbox lives, for logs and trajectories."""

    backend: str
    host_id: str
    workdir: str
    slot: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Sandbox(Protocol):
    """One episode's sandbox session: runs, files, reset, close. Thread-safe, one call at a time."""

    info: SandboxInfo
    busy_s: float  # seconds spent in runs and file operations so far (waiting for the lock included)

    def run(self, code: str, *, mode: RunMode = "python", stdin: str | None = None,
            timeout: float | None = None, files: dict[str, bytes | str] | None = None) -> RunResult: ...

    def put_file(self, path: str, data: bytes | str, mode: int | None = None) -> FileResult: ...

    def get_file(self, path: str, max_bytes: int | None = None) -> FileResult: ...

    def reset(self) -> bool: ...

    def close(self) -> None: ...

    async def arun(self, code: str, *, mode: RunMode = "python", stdin: str | None = None,
                   timeout: float | None = None, files: dict[str, bytes | str] | None = None) -> RunResult: ...


@runtime_checkable
class SandboxPool(Protocol):
    """Hands out sandboxes; keeps warm hosts; cleans up on close."""

    backend: str

    def acquire(self, timeout: float | None = None) -> Sandbox: ...

    async def aacquire(self, timeout: float | None = None) -> Sandbox: ...

    def release(self, sandbox: Sandbox) -> None: ...

    def close(self) -> None: ...
