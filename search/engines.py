"""The ranker registry: engine names to builder/opener classes, imported only when used.

A new engine registers a class with ``name``, ``build(rows, out_dir)``, ``open(out_dir)`` and the
:class:`~toolgym.search.base.Ranker` methods (the class itself, or where to import it from)::

    register_engine("myengine", "mypkg.module:MyRanker")
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from toolgym.errors import ConfigError

ENGINES: dict[str, Any] = {
    "tantivy": "toolgym.search.tantivy_engine:TantivyRanker",
    "fts5": "toolgym.search.fts5:Fts5Ranker",
    "bm25s": "toolgym.search.bm25s_engine:Bm25sRanker",
}
# Chosen by bench/search.py: tantivy answers in about a millisecond on 100k documents where FTS5
# takes tens (it scores every matching document), and builds faster than bm25s.
DEFAULT_ENGINE = "tantivy"
log = logging.getLogger(__name__)


def register_engine(name: str, target: str | type) -> None:
    """Make an engine available to ``build_index``/``open_index`` under ``name``."""
    if isinstance(target, str) and ":" not in target:
        raise ConfigError(f"engine target must look like 'module:Class', got {target!r}")
    ENGINES[name] = target


def engine_class(name: str) -> Any:
    """The ranker class registered as ``name``.

    Example:
        >>> engine_class("fts5").name
        'fts5'
    """
    if name not in ENGINES:
        raise ConfigError(f"unknown search engine {name!r}; choose from {', '.join(sorted(ENGINES))}")
    target = ENGINES[name]
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def available_engine(preferred: str = DEFAULT_ENGINE) -> str:
    """``preferred`` if its package is installed, else ``fts5`` (always there: it is stdlib SQLite)."""
    try:
        cls = engine_class(preferred)
        if preferred in ("tantivy", "bm25s"):
            importlib.import_module(preferred)
        return cls.name
    except (ImportError, ConfigError):
        log.warning("search engine %r is not available (pip install %s); using SQLite FTS5, which is slower "
                    "to query on large corpora", preferred, preferred)
        return "fts5"
