"""Rubrics: reward functions composed with weights.

A reward function is a plain function whose parameter names say what it needs; the rubric fills
them from the episode's inputs (``answer``, ``reference``, ``completion``, ``messages``, ``task``,
``state``, ``tool_calls`` and anything an env adds). It returns a float, or ``None`` when it does
not apply (left out of the sum). Weight 0 makes a function a logged metric only.
Group functions see a whole group of rollouts at once (parameters are the per-rollout names
pluralised: ``answers``, ``completions``, ``rewards`` ...) and return one score per rollout.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

RewardFn = Callable[..., float | None]


@dataclass(frozen=True)
class Score:
    """A rubric's verdict: the weighted reward and each function's raw value."""

    reward: float
    breakdown: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None


@dataclass
class _Entry:
    fn: RewardFn
    weight: float
    name: str
    params: tuple[str, ...]
    takes_all: bool


def _entry(item: RewardFn | tuple[RewardFn, float]) -> _Entry:
    fn, weight = item if isinstance(item, tuple) else (item, 1.0)
    sig = inspect.signature(fn)
    params = tuple(p.name for p in sig.parameters.values()
                   if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty)
    optional = tuple(p.name for p in sig.parameters.values()
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty)
    takes_all = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    return _Entry(fn, float(weight), getattr(fn, "__name__", repr(fn)), params + tuple("?" + o for o in optional),
                  takes_all)


def _call(entry: _Entry, inputs: dict[str, Any]) -> float | None:
    if entry.takes_all:
        return entry.fn(**inputs)
    kwargs = {}
    for p in entry.params:
        if p.startswith("?"):
            if p[1:] in inputs:
                kwargs[p[1:]] = inputs[p[1:]]
        elif p in inputs:
            kwargs[p] = inputs[p]
        else:
            raise TypeError(f"reward function '{entry.name}' needs input '{p}', which this env does not provide "
                            f"(available: {', '.join(sorted(inputs))})")
    return entry.fn(**kwargs)


class Rubric:
    """Weighted reward functions, group functions and per-turn functions.

    Example:
        >>> def correct(answer, reference):
        ...     return float(answer == reference)
        >>> def short(completion):
        ...     return float(len(completion) < 20)
        >>> r = Rubric([correct, (short, 0.0)])
        >>> s = r.score(answer="4", reference="4", completion="Answer: 4")
        >>> s.reward, s.breakdown
        (1.0, {'correct': 1.0, 'short': 1.0})
    """

    def __init__(self, funcs: Sequence[RewardFn | tuple[RewardFn, float]] = (), *,
                 group_funcs: Sequence[RewardFn | tuple[RewardFn, float]] = (),
                 turn_funcs: Sequence[RewardFn | tuple[RewardFn, float]] = ()):
        self.funcs = [_entry(f) for f in funcs]
        self.group_funcs = [_entry(f) for f in group_funcs]
        self.turn_funcs = [_entry(f) for f in turn_funcs]

    @property
    def bounds(self) -> tuple[float, float]:
        """Reward range assuming each function returns a value in [0, 1]."""
        entries = self.funcs + self.group_funcs
        lo = sum(min(e.weight, 0.0) for e in entries)
        hi = sum(max(e.weight, 0.0) for e in entries)
        return lo, hi

    def _weighted(self, entries: list[_Entry], values: dict[str, float | None]) -> float:
        total = 0.0
        for e in entries:
            v = values.get(e.name)
            if v is not None and e.weight:
                total += e.weight * v
        return total

    def score(self, **inputs: Any) -> Score:
        """Score one rollout. A crashing function scores 0 and the error is reported, not raised."""
        values: dict[str, float | None] = {}
        errors = []
        for e in self.funcs:
            try:
                v = _call(e, inputs)
                values[e.name] = None if v is None else _finite(float(v))
            except Exception as exc:
                values[e.name] = 0.0
                errors.append(f"{e.name}: {type(exc).__name__}: {exc}")
        return Score(self._weighted(self.funcs, values), values, "; ".join(errors) or None)

    def score_turn(self, **inputs: Any) -> float:
        """Per-turn reward: weighted sum of the turn functions (0 when there are none)."""
        total = 0.0
        for e in self.turn_funcs:
            try:
                v = _call(e, inputs)
            except Exception:
                v = None
            if v is not None:
                total += e.weight * _finite(float(v))
        return total

    def score_group(self, inputs: Sequence[dict[str, Any]]) -> list[Score]:
        """Score a group of rollouts of one task: per-rollout functions, then group functions."""
        scores = [self.score(**i) for i in inputs]
        if not self.group_funcs:
            return scores
        plural: dict[str, list[Any]] = {}
        keys = set().union(*(i.keys() for i in inputs)) if inputs else set()
        for k in keys:
            plural[k + "s"] = [i.get(k) for i in inputs]
        plural["rewards"] = [s.reward for s in scores]
        out = []
        group_values: dict[str, list[float | None]] = {}
        for e in self.group_funcs:
            try:
                vals = list(_call(e, plural))
                if len(vals) != len(inputs):
                    raise ValueError(f"returned {len(vals)} scores for {len(inputs)} rollouts")
            except Exception:
                vals = [0.0] * len(inputs)
            group_values[e.name] = vals
        for i, s in enumerate(scores):
            extra = {name: (None if v[i] is None else float(v[i])) for name, v in group_values.items()}
            out.append(Score(s.reward + self._weighted(self.group_funcs, extra), {**s.breakdown, **extra}, s.error))
        return out


def _finite(v: float) -> float:
    return v if math.isfinite(v) else 0.0
