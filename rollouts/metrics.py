"""What "solved" means, once: pass rate and pass@k against the env's own top reward.

An episode is solved when its reward reaches the env's maximum return (``env.return_bounds`` when the
env declares one, as text envs paying per-turn rewards do, else the rubric's ``env.reward_bounds``),
within a small tolerance for float sums. Training logs, ``toolgym eval`` and run summaries all count
passes with :func:`pass_rate` / :func:`pass_at_k` from here, so they agree for any env, including
one whose top reward is not 1.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SOLVED_TOL = 1e-6  # rubric rewards are sums of weighted floats: 0.1 + 0.2 + 0.7 must count as 1.0


def success_threshold(env: Any = None, override: float | None = None) -> float:
    """The reward an episode of ``env`` needs to count as solved (``override`` wins; 1.0 without bounds).

    Example:
        >>> class E: reward_bounds = (0.0, 2.0)
        >>> success_threshold(E()), success_threshold(E(), override=0.5), success_threshold(None)
        (2.0, 0.5, 1.0)
    """
    if override is not None:
        return float(override)
    bounds = getattr(env, "return_bounds", None) or getattr(env, "reward_bounds", None)
    if bounds is None:
        return 1.0
    lo, hi = (float(b) for b in bounds)
    return hi if hi > lo else 1.0  # a degenerate range (e.g. (0, 0): no final reward) says nothing


def solved(reward: float, threshold: float = 1.0) -> bool:
    """True when ``reward`` reaches ``threshold`` (within :data:`SOLVED_TOL`).

    Example:
        >>> solved(0.1 + 0.2 + 0.7), solved(0.99)
        (True, False)
    """
    return reward >= threshold - SOLVED_TOL


def pass_rate(rewards: Iterable[float], threshold: float = 1.0) -> float:
    """Fraction of ``rewards`` that are :func:`solved` (0.0 for none).

    Example:
        >>> pass_rate([1.0, 0.5, 2.0, 2.0], threshold=2.0)
        0.5
    """
    values = list(rewards)
    return sum(solved(r, threshold) for r in values) / len(values) if values else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` successes (Chen et al., 2021).

    Example:
        >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 4), pass_at_k(4, 0, 2)
        (0.25, 1.0, 0.0)
    """
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_ks(rewards_by_task: Mapping[str, Sequence[float]], threshold: float = 1.0,
               ks: Iterable[int] = (1, 2, 4, 8, 16, 32, 64)) -> dict[int, float]:
    """Mean pass@k over tasks for every ``k`` up to the smallest group (plus that group size itself).

    Example:
        >>> pass_at_ks({"a": [1.0, 0.0], "b": [0.0, 0.0]})
        {1: 0.25, 2: 0.5}
    """
    if not rewards_by_task:
        return {}
    group = min(len(v) for v in rewards_by_task.values())
    chosen = sorted({k for k in (*ks, group) if 1 <= k <= group})
    return {k: statistics.fmean(pass_at_k(len(v), sum(solved(r, threshold) for r in v), k)
                                for v in rewards_by_task.values()) for k in chosen}
