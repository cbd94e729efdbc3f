"""Group checkers: scores that compare the rollouts of one task with each other.

Convention: a group function takes lists with one entry per rollout of the group, named as the
per-rollout input pluralised with an ``s`` (``answer`` -> ``answers``, ``completion`` ->
``completions``, ``reference`` -> ``references``, a per-rollout ``length`` -> ``lengths``), plus
``rewards``: each rollout's weighted reward from the per-rollout functions. It returns a list of
floats (or ``None`` where it does not apply) of the same length, in the same order.
Optional parameters (with defaults) tune the function and are only filled when an input of
that name exists.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from toolgym.verifiers.checks import normalize_answer


def _keys(answers: Sequence[str | None], key: Callable[[str], str]) -> list[str | None]:
    out: list[str | None] = []
    for a in answers:
        k = key(a) if isinstance(a, str) else None
        out.append(k or None)  # an answer that normalises to nothing is no vote
    return out


def majority_agreement(answers: Sequence[str | None],
                       key: Callable[[str], str] = normalize_answer) -> list[float]:
    """Self-consistency: the share of the group that gave the same answer as this rollout.

    Answers are compared after ``key`` (SQuAD-style normalisation by default). The share is
    over the whole group, so rollouts with no answer dilute every vote and score 0 themselves.

    Example:
        >>> majority_agreement(["42", "42.", "41", None])
        [0.5, 0.5, 0.25, 0.0]
    """
    keys = _keys(answers, key)
    counts = Counter(k for k in keys if k is not None)
    n = len(keys)
    return [counts[k] / n if k is not None else 0.0 for k in keys]


def majority_answer(answers: Sequence[str | None], key: Callable[[str], str] = normalize_answer) -> str | None:
    """The plurality answer of a group (maj@k), as first written; ``None`` on a tie or no answers.

    Example:
        >>> majority_answer(["7", " 7 ", "8"]), majority_answer(["7", "8"])
        ('7', None)
    """
    keys = _keys(answers, key)
    ranked = Counter(k for k in keys if k is not None).most_common(2)
    if not ranked or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
        return None
    return next(a for a, k in zip(answers, keys, strict=True) if k == ranked[0][0])


def shortest_correct_bonus(rewards: Sequence[float], lengths: Sequence[int | float],
                           correct_at: float = 1.0) -> list[float]:
    """Reward brevity among correct rollouts only, so length never competes with correctness.

    A rollout is correct when its reward is at least ``correct_at``. Correct rollouts get
    1.0 at the shortest length falling linearly to 0.0 at the longest correct length (all 1.0
    when they are equally long); incorrect ones get 0.0.

    Raises:
        ValueError: ``rewards`` and ``lengths`` differ in length.

    Example:
        >>> shortest_correct_bonus([1.0, 1.0, 1.0, 0.0], [100, 200, 300, 10])
        [1.0, 0.5, 0.0, 0.0]
        >>> shortest_correct_bonus([1.0, 0.2], [50, 10])
        [1.0, 0.0]
    """
    if len(rewards) != len(lengths):
        raise ValueError(f"shortest_correct_bonus: {len(rewards)} rewards but {len(lengths)} lengths")
    correct = [r is not None and r >= correct_at for r in rewards]
    lens = [float(n) for n, ok in zip(lengths, correct, strict=True) if ok]
    if not lens:
        return [0.0] * len(rewards)
    lo, hi = min(lens), max(lens)
    return [(1.0 if hi == lo else (hi - float(n)) / (hi - lo)) if ok else 0.0
            for n, ok in zip(lengths, correct, strict=True)]
