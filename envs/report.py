"""The typed record of one environment turn: what ``step`` did, for the rollout worker and the trainer.

Gymnasium's ``step`` returns ``(obs, reward, terminated, truncated, info)`` with ``info`` a free-form
dict. toolgym's envs build a :class:`TurnReport` instead and derive ``info`` from it
(:meth:`TurnReport.to_info`); the report itself travels in ``info["report"]``, so the rollout worker
reads typed fields (tool outcomes with ``ok``, sandbox seconds, the rubric breakdown) rather than keys.
An env that is not a toolgym env (a third-party Gymnasium env behind an adapter) still works: the
worker rebuilds a report from its ``info`` with :meth:`TurnReport.from_info`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from toolgym.errors import ErrorRecord

MALFORMED_KINDS = frozenset({"parse", "unknown_tool", "bad_arguments"})  # ToolResult.error values the model caused


@dataclass(slots=True)  # slots: built for every call of every turn, on the env's hot path
class ToolOutcome:
    """One tool call of a turn: which tool, whether it succeeded, why not, how long it took.

    ``error`` is the :class:`~toolgym.envs.tools.ToolResult` error kind: ``"parse"``,
    ``"unknown_tool"`` and ``"bad_arguments"`` are malformed calls; ``"timeout"`` and
    ``"exception"`` are the tool's own failures.
    """

    name: str
    ok: bool
    error: str | None = None
    elapsed_s: float = 0.0
    chars: int = 0

    @property
    def malformed(self) -> bool:
        """True when the model wrote a call the env could not run as asked."""
        return self.error in MALFORMED_KINDS


@dataclass(slots=True)
class TurnReport:
    """What one turn produced.

    ``reward`` is the step's reward: ``turn_reward`` plus, on the last step, ``final_reward``.
    ``sandbox_s`` is the seconds this turn's sandbox sessions were busy (tool runs and, on the last
    step, a rubric that runs code), as the sessions measured it.

    Example:
        >>> r = TurnReport(task_id="t", turn=1, turn_reward=0.5,
        ...                tools=[ToolOutcome("calculator", ok=False, error="bad_arguments")])
        >>> r.tool_calls, r.tool_errors, r.malformed_calls, r.ended
        (1, 1, 1, False)
        >>> r.to_info()["tool_errors"]
        1
    """

    task_id: str
    turn: int
    turn_reward: float = 0.0
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    truncated_reason: str | None = None
    tools: list[ToolOutcome] = field(default_factory=list)
    total_malformed_calls: int = 0
    sandbox_s: float = 0.0
    final_reward: float | None = None
    rubric: dict[str, float] = field(default_factory=dict)
    answer: str | None = None
    error: ErrorRecord | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # env-specific info keys (a wrapped env's own info)

    @property
    def tool_calls(self) -> int:
        return len(self.tools)

    @property
    def tool_errors(self) -> int:
        return sum(not t.ok for t in self.tools)

    @property
    def malformed_calls(self) -> int:
        return sum(t.malformed for t in self.tools)

    @property
    def ended(self) -> bool:
        return self.terminated or self.truncated

    @property
    def tool_s(self) -> float:
        return sum(t.elapsed_s for t in self.tools)

    def to_info(self) -> dict[str, Any]:
        """Gymnasium's ``info`` for this step; the report itself is under ``"report"``."""
        errors = malformed = 0
        for t in self.tools:
            errors += not t.ok
            malformed += t.error in MALFORMED_KINDS
        info: dict[str, Any] = {"task_id": self.task_id, "turn": self.turn, "turn_reward": self.turn_reward,
                                **self.extra, "tool_calls": len(self.tools), "tool_errors": errors,
                                "malformed_calls": malformed,
                                "total_malformed_calls": self.total_malformed_calls, "sandbox_s": self.sandbox_s}
        if self.ended:
            info.update(final_reward=self.final_reward, rubric=dict(self.rubric), answer=self.answer,
                        truncated_reason=self.truncated_reason)
            if self.error is not None:
                info["error"] = self.error.to_dict()
        info["report"] = self
        return info

    @classmethod
    def from_info(cls, info: dict[str, Any], reward: float, terminated: bool, truncated: bool) -> TurnReport:
        """The report inside ``info``, or one rebuilt from its keys (envs that are not toolgym envs).

        Example:
            >>> r = TurnReport.from_info({"tool_calls": 2, "tool_errors": 1, "rubric": {"em": 1.0}}, 1.0, True, False)
            >>> r.tool_calls, r.tool_errors, r.rubric, r.reward
            (2, 1, {'em': 1.0}, 1.0)
        """
        report = info.get("report")
        if isinstance(report, TurnReport):
            return report
        n, failed = int(info.get("tool_calls", 0) or 0), int(info.get("tool_errors", 0) or 0)
        tools = [ToolOutcome(name="", ok=i >= failed) for i in range(n)]
        error = info.get("error")
        return cls(task_id=str(info.get("task_id", "")), turn=int(info.get("turn", 0) or 0),
                   turn_reward=float(info.get("turn_reward", reward) or 0.0), reward=float(reward),
                   terminated=bool(terminated), truncated=bool(truncated),
                   truncated_reason=info.get("truncated_reason") if truncated else None, tools=tools,
                   total_malformed_calls=int(info.get("total_malformed_calls", 0) or 0),
                   sandbox_s=float(info.get("sandbox_s", 0.0) or 0.0), final_reward=info.get("final_reward"),
                   rubric=dict(info.get("rubric") or {}), answer=info.get("answer"),
                   error=ErrorRecord(**error) if isinstance(error, dict) else None)
