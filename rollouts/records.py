"""Typed rollout records: what one episode produced, token for token, and how to store it.

A :class:`Trajectory` is the unit a trainer consumes. Its ``token_ids`` are exactly the ids the
engine sampled plus the environment's tokens between turns; ``loss_mask`` is 1 on sampled tokens
(including each turn's end-of-turn token) and 0 on prompt, tool and template tokens;
``logprobs`` are the sampler's log-probabilities, aligned with ``token_ids`` (0.0 where the mask
is 0). Records are versioned (:data:`SCHEMA_VERSION`) and round-trip through JSON.

Storage: :class:`TrajectoryWriter` appends one JSON line per trajectory as it finishes (a crash
loses at most the line being written), :func:`read_trajectories` reads them back (skipping a torn
last line), :func:`done_keys` says which ``(task_id, sample_index)`` pairs are finished so a
run can resume, and :func:`to_parquet` exports a columnar file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from toolgym.errors import ErrorRecord

SCHEMA_VERSION = 1


@dataclass
class ToolResultRecord:
    """One tool call's outcome within a turn."""

    name: str
    ok: bool
    error: str | None = None
    elapsed_s: float = 0.0
    chars: int = 0


@dataclass
class Turn:
    """One assistant turn and the environment's reply.

    ``start:end`` is the sampled span in ``Trajectory.token_ids`` (mask 1); ``env_start:env_end``
    the tokens that followed it (mask 0): template tokens appended after a completion cut at the
    token limit, tool results and the next assistant header.
    """

    index: int
    start: int
    end: int
    env_start: int = 0
    env_end: int = 0
    finish_reason: str = "stop"
    tool_results: list[ToolResultRecord] = field(default_factory=list)
    reward: float = 0.0
    generate_s: float = 0.0
    env_s: float = 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Turn:
        d = dict(d)
        d["tool_results"] = [ToolResultRecord(**r) for r in d.get("tool_results", [])]
        return cls(**d)


@dataclass
class DriftEvent:
    """A re-render of the conversation that is not a prefix-extension of the tokens so far.

    ``kind`` is ``"template"`` when the rendered text changed (e.g. a template dropped an earlier
    ``<think>`` block) and ``"tokenization"`` when the text matches but its canonical tokens differ
    from the sampled ones. ``position`` is the first differing token index; ``action`` the policy
    applied (``"keep"`` or ``"split"``).
    """

    turn: int
    kind: str
    position: int
    action: str = "keep"


@dataclass
class Cost:
    """What an episode consumed."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    env_tokens: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    malformed_calls: int = 0
    tool_s: float = 0.0
    sandbox_s: float = 0.0


@dataclass
class Timings:
    """Wall-clock seconds spent per phase of an episode."""

    generate_s: float = 0.0
    env_s: float = 0.0
    total_s: float = 0.0
    started_at: float = 0.0


@dataclass
class Trajectory:
    """One episode (or one segment of an episode split at template drift), ready for training.

    Token arrays (equal lengths): ``token_ids`` = prompt (``prompt_len`` ids) followed by, per turn,
    the sampled ids (``turns[i].start:end``) and the environment's ids (``turns[i].env_start:env_end``);
    ``loss_mask`` is 1 exactly on sampled ids; ``logprobs`` holds the sampler's log-probabilities
    there and 0.0 elsewhere.

    Rewards: ``turn_rewards[i]`` is step ``i``'s reward from the env (the last one includes the final
    rubric reward); ``reward`` is the episode's return, their sum over the whole episode (every
    segment of a split episode carries the same ``reward``); ``rubric`` is the final score's
    breakdown. Samples of one task share ``group_id`` and differ in ``sample_index``.

    Failures: ``error`` is set when the episode failed (its ``reward`` is then 0.0 unless the env
    still scored it); ``truncated_reason`` says why a budget ended it (``max_turns``,
    ``max_total_tokens``, ``time_limit``, ``context_length``). ``cost`` and ``timings`` are the
    episode's (repeated on each segment).

    Example:
        >>> t = Trajectory(env_id="e", task_id="t", token_ids=[1, 2, 3], loss_mask=[0, 1, 1],
        ...                logprobs=[0.0, -0.5, -0.1], prompt_len=1, reward=1.0)
        >>> t.completion_ids, Trajectory.from_json(t.to_json()) == t
        ([2, 3], True)
    """

    env_id: str
    task_id: str
    schema_version: int = SCHEMA_VERSION
    env_version: str = ""
    group_id: str = ""
    sample_index: int = 0
    segment: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prompt_len: int = 0
    turns: list[Turn] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)
    reward: float = 0.0
    rubric: dict[str, float | None] = field(default_factory=dict)
    terminated: bool = False
    truncated: bool = False
    truncated_reason: str | None = None
    error: ErrorRecord | None = None
    attempts: int = 1
    exact: bool = True  # False when an engine could only return text (ids were re-tokenised)
    drift: list[DriftEvent] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    cost: Cost = field(default_factory=Cost)
    versions: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        """``(task_id, sample_index)``: identifies the episode for resuming."""
        return (self.task_id, self.sample_index)

    @property
    def completion_ids(self) -> list[int]:
        """The ids after the prompt (sampled and environment tokens)."""
        return self.token_ids[self.prompt_len:]

    @property
    def num_sampled(self) -> int:
        return sum(self.loss_mask)

    @property
    def ok(self) -> bool:
        return self.error is None

    def check(self) -> None:
        """Raise ``ValueError`` if the token arrays are inconsistent."""
        n = len(self.token_ids)
        if len(self.loss_mask) != n or len(self.logprobs) != n:
            raise ValueError(f"token_ids/loss_mask/logprobs lengths differ: {n}, {len(self.loss_mask)}, "
                             f"{len(self.logprobs)}")
        if any(self.loss_mask[: self.prompt_len]):
            raise ValueError("loss_mask is 1 inside the prompt")
        if any(lp != 0.0 for lp, m in zip(self.logprobs, self.loss_mask, strict=True) if not m):
            raise ValueError("logprobs must be 0.0 where loss_mask is 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["error"] = self.error.to_dict() if self.error else None
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), default=str)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        version = d.get("schema_version", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise ValueError(f"trajectory schema version {version} is newer than this toolgym ({SCHEMA_VERSION})")
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["turns"] = [Turn.from_dict(t) for t in d.get("turns", [])]
        d["drift"] = [DriftEvent(**e) for e in d.get("drift", [])]
        d["timings"] = Timings(**d.get("timings", {}))
        d["cost"] = Cost(**d.get("cost", {}))
        d["error"] = ErrorRecord(**d["error"]) if d.get("error") else None
        return cls(**d)

    @classmethod
    def from_json(cls, line: str) -> Trajectory:
        return cls.from_dict(json.loads(line))


class TrajectoryWriter:
    """Append trajectories to a JSONL file, one flushed line each.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "r.jsonl")
        >>> with TrajectoryWriter(path) as w:
        ...     w.write(Trajectory(env_id="e", task_id="t0"))
        >>> [t.task_id for t in read_trajectories(path)], done_keys(path)
        (['t0'], {('t0', 0)})
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(self.path)
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, trajectory: Trajectory) -> None:
        self._fh.write(trajectory.to_json() + "\n")
        self._fh.flush()

    def write_all(self, trajectories: Iterable[Trajectory]) -> None:
        for t in trajectories:
            self.write(t)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_torn_tail(path: Path) -> None:
    """A crash mid-write leaves a last line without newline: cut it so appends start clean."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    with path.open("r+b") as fh:
        fh.truncate(data.rfind(b"\n") + 1)


def iter_trajectories(path: str | os.PathLike[str]) -> Iterator[Trajectory]:
    """Yield the trajectories of a JSONL file; a torn (unterminated) last line is skipped."""
    p = Path(path)
    if not p.exists():
        return
    with p.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            if line.strip():
                yield Trajectory.from_json(line)


def read_trajectories(path: str | os.PathLike[str]) -> list[Trajectory]:
    """All trajectories of a JSONL file."""
    return list(iter_trajectories(path))


def done_keys(path: str | os.PathLike[str]) -> set[tuple[str, int]]:
    """``(task_id, sample_index)`` of every episode already recorded (failed ones included)."""
    return {t.key for t in iter_trajectories(path)}


_SCALARS = ("schema_version", "env_id", "env_version", "task_id", "group_id", "sample_index", "segment",
            "prompt_len", "reward", "terminated", "truncated", "truncated_reason", "attempts", "exact")
_JSON_COLUMNS = ("messages", "turns", "rubric", "error", "drift", "timings", "cost", "versions", "metadata")


def to_parquet(trajectories: Iterable[Trajectory], path: str | os.PathLike[str]) -> Path:
    """Write trajectories as a Parquet table: token arrays as list columns, nested records as JSON text.

    Example:
        >>> import tempfile, os, pyarrow.parquet as pq
        >>> p = to_parquet([Trajectory(env_id="e", task_id="t", token_ids=[5], loss_mask=[1], logprobs=[-1.0])],
        ...                os.path.join(tempfile.mkdtemp(), "r.parquet"))
        >>> pq.read_table(p).column("token_ids").to_pylist()
        [[5]]
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [t.to_dict() for t in trajectories]
    cols: dict[str, Any] = {k: [r[k] for r in rows] for k in _SCALARS}
    cols["token_ids"] = pa.array([r["token_ids"] for r in rows], type=pa.list_(pa.int32()))
    cols["loss_mask"] = pa.array([r["loss_mask"] for r in rows], type=pa.list_(pa.int8()))
    cols["logprobs"] = pa.array([r["logprobs"] for r in rows], type=pa.list_(pa.float32()))
    cols["turn_rewards"] = pa.array([r["turn_rewards"] for r in rows], type=pa.list_(pa.float64()))
    for k in _JSON_COLUMNS:
        cols[k] = [json.dumps(r[k], ensure_ascii=False, default=str) for r in rows]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), out)
    return out
