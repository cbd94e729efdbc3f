"""The ``toolgym-search-qa`` pack: answer multi-hop questions by searching a generated encyclopedia (or any indexed corpus).

Its entry point (group ``toolgym.envs``) is :func:`register`; toolgym calls it the first time
the registry is read. The environment classes load only when an env is made, so listing envs
stays cheap: the names below are re-exported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

import toolgym

PACK = "toolgym-search-qa"
__all__ = ["PACK", "register", "SearchQAEnv", "used_search"]


def register() -> None:
    """Register this pack's environments with toolgym (and Gymnasium)."""
    toolgym.register("toolgym/SearchQA-v0", entry_point="toolgym_search_qa.env:SearchQAEnv", pack=PACK)


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("toolgym_search_qa.env"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
