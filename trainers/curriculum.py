"""Which tasks to train on next: uniform, or weighted by the policy's online pass rate.

GRPO learns only from groups whose rewards differ: a task the policy always solves, or never
does, gives every episode the same reward, zero advantage and no gradient. For a task solved
with probability ``p`` the chance that a group of ``G`` disagrees is ``1 - p^G - (1-p)^G``,
highest near ``p = 0.5``. :class:`PassRateSampler` keeps a running pass rate per task (or per
any grouping of tasks, e.g. difficulty or pack) from the groups it has seen and samples tasks
with weight ``floor + 4 p (1 - p)``: tasks solved sometimes come first, unseen tasks count as
``p = prior``, and the floor keeps solved and hopeless tasks coming back now and then, so a
rate that changes as the policy learns is noticed.

Samplers are plain objects with ``sample``/``update`` and a JSON-able ``state_dict`` (kept in the
trainer's checkpoints so a resumed run draws the same tasks). Pick one with
``trainer.curriculum.kind=uniform|pass_rate``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from toolgym.errors import ConfigError
from toolgym.rollouts.metrics import pass_rate


@dataclass
class CurriculumConfig:
    """How the trainer picks tasks.

    Args:
        kind: Key of :data:`SAMPLERS` (``uniform`` or ``pass_rate``).
        prior: Pass rate assumed for a task not seen yet.
        ema: Weight of the newest group when updating a task's pass rate (1.0: keep only the last).
            With a shared ``key`` every group of that key moves the shared rate, so use a smaller
            value there (e.g. 0.1).
        floor: Weight every task keeps whatever its pass rate.
        success: Reward at or above which an episode counts as a pass (``None``: the env's top
            reward, as in every pass rate toolgym reports; see :mod:`toolgym.rollouts.metrics`).
        key: Task metadata field whose value groups tasks that share one pass rate (``""``: each
            task on its own; e.g. ``difficulty``).
    """

    kind: str = "uniform"
    prior: float = 0.5
    ema: float = 0.5
    floor: float = 0.05
    success: float | None = None
    key: str = ""


class TaskSampler(Protocol):
    """Chooses task indices for a step and learns from the rewards of the groups that ran."""

    def sample(self, k: int, rng: random.Random) -> list[int]: ...

    def update(self, task_index: int, rewards: Sequence[float]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class UniformSampler:
    """``k`` distinct tasks, uniformly (what GRPO does by default)."""

    def __init__(self, num_tasks: int, cfg: CurriculumConfig | None = None, group_of: Callable[[int], str] | None = None,
                 threshold: float = 1.0):
        self.num_tasks = num_tasks

    def sample(self, k: int, rng: random.Random) -> list[int]:
        return rng.sample(range(self.num_tasks), min(k, self.num_tasks))

    def update(self, task_index: int, rewards: Sequence[float]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PassRateSampler:
    """``k`` distinct tasks, weighted towards those the policy solves sometimes.

    Example:
        >>> s = PassRateSampler(3, CurriculumConfig(kind="pass_rate", ema=1.0))
        >>> s.update(0, [1.0, 1.0, 1.0, 1.0])  # always solved
        >>> s.update(1, [0.0, 0.0, 0.0, 0.0])  # never solved
        >>> s.update(2, [1.0, 0.0, 1.0, 0.0])  # solved half the time
        >>> [round(w, 2) for w in s.weights()]
        [0.05, 0.05, 1.05]
        >>> picks = [s.sample(1, random.Random(i))[0] for i in range(200)]
        >>> picks.count(2) > 150
        True
    """

    def __init__(self, num_tasks: int, cfg: CurriculumConfig | None = None, group_of: Callable[[int], str] | None = None,
                 threshold: float = 1.0):
        self.num_tasks = num_tasks
        self.threshold = threshold
        self.cfg = cfg or CurriculumConfig(kind="pass_rate")
        self.group_of = group_of or str
        self.rates: dict[str, float] = {}  # group -> running pass rate
        self.seen: dict[str, int] = {}  # group -> episodes counted

    def weights(self) -> list[float]:
        """Sampling weight of every task, in index order."""
        out = []
        for i in range(self.num_tasks):
            p = self.rates.get(self.group_of(i), self.cfg.prior)
            out.append(self.cfg.floor + 4.0 * p * (1.0 - p))
        return out

    def sample(self, k: int, rng: random.Random) -> list[int]:
        # Weighted sampling without replacement (Efraimidis-Spirakis): the k largest u^(1/w).
        keys = [(math.log(rng.random() or 1e-300) / w, i) for i, w in enumerate(self.weights())]
        return [i for _, i in sorted(keys, reverse=True)[: min(k, self.num_tasks)]]

    def update(self, task_index: int, rewards: Sequence[float]) -> None:
        ok = [r for r in rewards if not math.isnan(r)]  # failed episodes say nothing about the policy
        if not ok:
            return
        group = self.group_of(task_index)
        rate = pass_rate(ok, self.cfg.success if self.cfg.success is not None else self.threshold)
        old = self.rates.get(group)
        self.rates[group] = rate if old is None else (1 - self.cfg.ema) * old + self.cfg.ema * rate
        self.seen[group] = self.seen.get(group, 0) + len(ok)

    def state_dict(self) -> dict[str, Any]:
        return {"rates": dict(self.rates), "seen": dict(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rates = {str(k): float(v) for k, v in state.get("rates", {}).items()}
        self.seen = {str(k): int(v) for k, v in state.get("seen", {}).items()}


SAMPLERS: dict[str, type] = {"uniform": UniformSampler, "pass_rate": PassRateSampler}


def make_sampler(cfg: CurriculumConfig, tasks: Any, threshold: float = 1.0) -> TaskSampler:
    """The sampler ``cfg.kind`` names, over a task source (``len`` and indexing); ``threshold``: the env's top reward.

    Example:
        >>> make_sampler(CurriculumConfig(kind="pass_rate", key="level"),
        ...              [type("T", (), {"metadata": {"level": 1}})()]).group_of(0)
        '1'
    """
    if cfg.kind not in SAMPLERS:
        raise ConfigError(f"unknown curriculum kind {cfg.kind!r}; known: {', '.join(SAMPLERS)}")
    group_of = (lambda i: str(tasks[i].metadata.get(cfg.key))) if cfg.key else None
    return SAMPLERS[cfg.kind](len(tasks), cfg, group_of, threshold=threshold)
