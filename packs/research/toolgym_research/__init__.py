"""The ``toolgym-research`` pack: answer questions that need both searching and computing.

Its entry point (group ``toolgym.envs``) is :func:`register`; toolgym calls it the first time
the registry is read. The environment class loads only when an env is made, so listing envs
stays cheap: the names below are re-exported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

import toolgym

PACK = "toolgym-research"
__all__ = ["PACK", "ResearchCodeEnv", "numeric_exact", "register", "used_python", "used_search"]
_LAZY = {"ResearchCodeEnv", "numeric_exact", "used_python", "used_search"}


def register() -> None:
    """Register this pack's environments with toolgym (and Gymnasium)."""
    toolgym.register("toolgym/ResearchCode-v0", entry_point="toolgym_research.env:ResearchCodeEnv", pack=PACK)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("toolgym_research.env"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
