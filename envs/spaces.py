"""Gymnasium spaces for chats: observations are message lists, actions are assistant turns."""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from gymnasium import spaces

ROLES = ("system", "user", "assistant", "tool")
_CHARSET = string.ascii_letters + string.digits + " .,:;!?+-*/=()<>{}[]\"'\n"


class Chat(spaces.Space):
    """A list of OpenAI-style messages: dicts with a ``role`` and a string (or null) ``content``.

    Example:
        >>> [{"role": "user", "content": "hi"}] in Chat()
        True
    """

    def __init__(self, max_messages: int = 256, seed: int | None = None):
        self.max_messages = max_messages
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> list[dict[str, Any]]:
        n = int(self.np_random.integers(1, 5))
        return [{"role": ROLES[int(self.np_random.integers(0, 4))], "content": _random_text(self.np_random, 40)}
                for _ in range(n)]

    def contains(self, x: Any) -> bool:
        if not isinstance(x, list) or len(x) > self.max_messages:
            return False
        return all(isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content", ""), (str, type(None)))
                   for m in x)

    def __repr__(self) -> str:
        return f"Chat(max_messages={self.max_messages})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Chat) and other.max_messages == self.max_messages


class AssistantTurn(spaces.Space):
    """An assistant turn: raw text, or a message dict with ``content`` and/or ``tool_calls``.

    Example:
        >>> "The answer is 4" in AssistantTurn()
        True
    """

    def __init__(self, max_chars: int = 1_000_000, seed: int | None = None):
        self.max_chars = max_chars
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        return _random_text(self.np_random, 64)

    def contains(self, x: Any) -> bool:
        if isinstance(x, str):
            return len(x) <= self.max_chars
        return isinstance(x, dict) and ("content" in x or "tool_calls" in x)

    def __repr__(self) -> str:
        return f"AssistantTurn(max_chars={self.max_chars})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, AssistantTurn) and other.max_chars == self.max_chars


def _random_text(rng: np.random.Generator, max_len: int) -> str:
    n = int(rng.integers(0, max_len))
    return "".join(_CHARSET[i] for i in rng.integers(0, len(_CHARSET), size=n))
