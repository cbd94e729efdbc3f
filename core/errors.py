"""Typed failures: a bad rollout is data on the trajectory, not a crashed batch.

Every component that can fail in a way a rollout should survive raises (or records) one of
these. Each carries a ``kind`` (which part failed) and ``retryable`` (whether running the same
episode again could succeed), so the rollout worker can retry transient failures and the
trainer can drop or keep failed episodes by policy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar


class ToolgymError(Exception):
    """Base class of every typed toolgym failure."""

    kind: ClassVar[str] = "env"
    retryable: ClassVar[bool] = False

    def to_record(self) -> ErrorRecord:
        """The JSON-friendly record stored on a trajectory."""
        return ErrorRecord(kind=self.kind, type=type(self).__name__, message=str(self), retryable=self.retryable)


class ModelError(ToolgymError):
    """The inference engine failed (server error, OOM, bad response)."""

    kind = "model"
    retryable = True


class OverlongPromptError(ModelError):
    """The prompt no longer fits the context window: the episode is truncated, not failed."""

    retryable = False


class ToolError(ToolgymError):
    """A tool failed in a way the model cannot be told about (its own crash is a tool message)."""

    kind = "tool"


class SandboxError(ToolgymError):
    """The sandbox backend lost a container or could not start one."""

    kind = "sandbox"
    retryable = True


class EnvError(ToolgymError):
    """The environment itself failed (bad task data, verifier crash)."""

    kind = "env"


class ConfigError(ToolgymError, ValueError):
    """A configuration or registry lookup is wrong; the message says how to fix it."""

    kind = "config"


@dataclass(frozen=True)
class ErrorRecord:
    """A failure as stored on a trajectory (JSON-serialisable)."""

    kind: str
    type: str
    message: str
    retryable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_exception(cls, exc: BaseException, kind: str = "env") -> ErrorRecord:
        """Record any exception; typed toolgym errors keep their own kind."""
        if isinstance(exc, ToolgymError):
            return exc.to_record()
        return cls(kind=kind, type=type(exc).__name__, message=str(exc)[:2000], retryable=False)
