"""Search: embedded lexical/dense retrieval, index backends, a batched server, a generated world.

Build an index of any corpus, then search it in-process or through a shared server::

    from toolgym.search import build_index, open_index
    build_index("corpus.jsonl", "index/")          # id, title, text per record
    open_index("index/").search("who founded Vorlex", k=5)

This package knows nothing of environments. Envs get the ``search`` and ``open`` tools from
:mod:`toolgym.envs.search_tools` and give each episode a :class:`SearchSession`
(``new_session(SearchConfig(...))``, or ``backends.session(...)`` over a :class:`SearchBackends`
the caller holds and closes) as ``search_client``.
"""

from __future__ import annotations

from toolgym.search.base import Document, Hit, IndexInfo, Ranker, SearchBackend
from toolgym.search.cache import ResultCache
from toolgym.search.client import (
    DEFAULT_BACKENDS,
    SearchBackends,
    SearchConfig,
    SearchSession,
    close_backends,
    make_backend,
    new_session,
)
from toolgym.search.engines import ENGINES, register_engine
from toolgym.search.errors import (
    IndexCorruptError,
    IndexNotFoundError,
    QueryError,
    ReplayMissError,
    SearchError,
    SearchUnavailableError,
)
from toolgym.search.index import Manifest, SearchIndex, build_index, open_index
from toolgym.search.server import SearchServer, serve
from toolgym.search.text import format_hits

__all__ = [
    "DEFAULT_BACKENDS", "ENGINES", "Document", "Hit", "IndexCorruptError", "IndexInfo", "IndexNotFoundError",
    "Manifest", "QueryError", "Ranker", "ReplayMissError", "ResultCache", "SearchBackend", "SearchBackends",
    "SearchConfig", "SearchError", "SearchIndex", "SearchServer", "SearchSession", "SearchUnavailableError",
    "build_index", "close_backends", "format_hits", "make_backend", "new_session", "open_index", "register_engine",
    "serve",
]
