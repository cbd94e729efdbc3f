"""Where toolgym keeps what it builds on first use (tiny models, generated search indexes)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_path(*parts: str) -> Path:
    """``$TOOLGYM_CACHE`` (or ``~/.cache/toolgym``) joined with ``parts``; not created.

    Example:
        >>> cache_path("tiny").name
        'tiny'
    """
    root = Path(os.environ.get("TOOLGYM_CACHE") or Path.home() / ".cache" / "toolgym")
    return root.joinpath(*parts)
