"""Search failures, typed so a tool can tell the model what went wrong and a user can fix it.

All are :class:`toolgym.errors.ToolError` subclasses: a search tool raising one becomes an error
tool message the model reads (the episode goes on); the CLI prints the message and exits non-zero.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from toolgym.errors import ConfigError, ToolError


class SearchError(ToolError):
    """Base class of search failures."""


class QueryError(SearchError):
    """The query (or document id, or ``k``) is unusable: empty, too long, no searchable words."""


class IndexNotFoundError(SearchError):
    """No index at the given path: it was never built, or the path is wrong."""


class IndexCorruptError(SearchError):
    """An index exists but cannot be read: a missing or damaged file, or a version mismatch."""


class SearchUnavailableError(SearchError):
    """The search server cannot be reached or did not answer in time; trying again may work."""

    retryable = True


class ReplayMissError(SearchError):
    """Replay mode found no recorded result for this request (the run was not recorded with it)."""


def require_engine_package(package: str) -> ModuleType:
    """Import an engine's optional package, or say how to install it.

    Example:
        >>> require_engine_package("json").__name__
        'json'
    """
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"the '{package}' engine needs the {package} package: pip install {package}") from None
