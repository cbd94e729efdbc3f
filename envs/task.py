"""Tasks and task sources: what an episode is about, picked deterministically by seed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

TASK_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Task:
    """One problem an episode is about.

    Args:
        id: Stable identifier, unique within the env and split.
        prompt: The user message that opens the episode.
        answer: The reference the rubric checks against (hidden from the model).
        split: ``"train"`` or ``"eval"`` (or any name the source defines).
        metadata: Anything else the env or its rubric needs (tests to run, documents...).

    Example:
        >>> Task(id="t0", prompt="What is 2+2?", answer="4").answer
        '4'
    """

    id: str
    prompt: str
    answer: Any = None
    split: str = "train"
    metadata: dict[str, Any] = field(default_factory=dict)
    schema_version: int = TASK_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Task:
        known = {k: data[k] for k in ("id", "prompt", "answer", "split", "metadata", "schema_version") if k in data}
        return cls(**known)


@runtime_checkable
class TaskSource(Protocol):
    """Indexable, sized collection of tasks for one split."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Task: ...


class ListTasks:
    """A task source over an in-memory list.

    Example:
        >>> src = ListTasks([Task(id="a", prompt="p")])
        >>> len(src), src[0].id
        (1, 'a')
    """

    def __init__(self, tasks: Sequence[Task]):
        self._tasks = list(tasks)
        self._by_id = {t.id: t for t in self._tasks}

    def __len__(self) -> int:
        return len(self._tasks)

    def __getitem__(self, index: int) -> Task:
        return self._tasks[index]

    def by_id(self, task_id: str) -> Task:
        return self._by_id[task_id]
