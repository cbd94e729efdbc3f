"""Answer extraction: which part of the model's final message counts as its answer.

Only the final assistant text counts; text inside tool calls and reasoning blocks never does, so a
model cannot score by hiding an answer in a tool argument or by listing candidates in its thinking.
"""

from __future__ import annotations

import re

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_TOOL = re.compile(r"<tool_call>.*?(</tool_call>|$)", re.DOTALL)
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_LINE = re.compile(r"(?:final answer|answer)\s*(?:is)?\s*[:=]\s*(.+)", re.IGNORECASE)
MAX_ANSWER_CHARS = 2_000


def strip_reasoning(text: str) -> str:
    """Drop ``<think>`` blocks and ``<tool_call>`` blocks.

    Example:
        >>> strip_reasoning("<think>maybe 3</think>It is 4")
        'It is 4'
    """
    return _TOOL.sub("", _THINK.sub("", text or "")).strip()


def boxed_answers(text: str) -> list[str]:
    r"""Every ``\boxed{...}`` payload, with nested braces.

    Example:
        >>> boxed_answers(r"so \boxed{\frac{1}{2}} and \boxed{3}")
        ['\\frac{1}{2}', '3']
    """
    out: list[str] = []
    start = 0
    while (i := text.find("\\boxed{", start)) != -1:
        depth, j = 1, i + 7
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth:
            break
        out.append(text[i + 7 : j - 1])
        start = j
    return out


def extract_answer(text: str) -> str | None:
    r"""The answer in a final message: ``<answer>`` tag, ``\boxed{}``, or an ``Answer:`` line.

    Several different tagged answers count as no answer (a model listing every candidate
    must not win). Returns ``None`` when nothing answer-like is there or it is too long.

    Example:
        >>> extract_answer("Work... Answer: 42")
        '42'
        >>> extract_answer(r"\boxed{1} \boxed{2}") is None
        True
    """
    body = strip_reasoning(text)
    if not body:
        return None
    candidates = [c.strip() for c in _ANSWER_TAG.findall(body)] or [c.strip() for c in boxed_answers(body)]
    if not candidates:
        lines = [m.group(1).strip() for m in _ANSWER_LINE.finditer(body)]
        candidates = lines[-1:] if lines else []
    if not candidates:
        return None
    if len(set(candidates)) > 1:
        return None
    answer = candidates[0].strip().rstrip(".")
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        return None
    return answer
