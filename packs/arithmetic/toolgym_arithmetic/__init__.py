"""The ``toolgym-arithmetic`` pack: multi-step arithmetic word problems solved with a calculator tool.

Its entry point (group ``toolgym.envs``) is :func:`register`; toolgym calls it the first time
the registry is read. The environment classes load only when an env is made, so listing envs
stays cheap: the names below are re-exported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

import toolgym

PACK = "toolgym-arithmetic"
__all__ = ["PACK", "register", "ArithmeticEnv", "ArithmeticTasks", "calculator", "format_number", "used_calculator"]


def register() -> None:
    """Register this pack's environments with toolgym (and Gymnasium)."""
    toolgym.register("toolgym/Arithmetic-v0", entry_point="toolgym_arithmetic.env:ArithmeticEnv", pack=PACK)


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("toolgym_arithmetic.env"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
