"""The ``toolgym-python-code`` pack: write a Python function that passes hidden unit tests run in the sandbox.

Its entry point (group ``toolgym.envs``) is :func:`register`; toolgym calls it the first time
the registry is read. The environment classes load only when an env is made, so listing envs
stays cheap: the names below are re-exported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

import toolgym

PACK = "toolgym-python-code"
__all__ = ["PACK", "register", "CodeTask", "PythonCodeEnv", "TASKS", "extract_code", "hidden_tests", "run_hidden_tests", "used_python"]


def register() -> None:
    """Register this pack's environments with toolgym (and Gymnasium)."""
    toolgym.register("toolgym/PythonCode-v0", entry_point="toolgym_python_code.env:PythonCodeEnv", pack=PACK)


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("toolgym_python_code.env"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
