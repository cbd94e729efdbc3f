"""Search tools: embedded lexical/dense retrieval, a batched server, and the tools envs use.

Build an index of any corpus, then search it in-process or through a shared server::

    from toolgym.envs.search import build_index, open_index
    build_index("corpus.jsonl", "index/")          # id, title, text per record
    open_index("index/").search("who founded Vorlex", k=5)

Envs get the ``search`` and ``open`` tools from :mod:`toolgym.envs.search.tools` and give each
episode a :class:`SearchSession` (``new_session(SearchConfig(...))``) as ``search_client``.
"""

from __future__ import annotations

from toolgym.envs.search.base import Document, Hit, IndexInfo, Ranker, SearchBackend
from toolgym.envs.search.cache import ResultCache
from toolgym.envs.search.client import SearchConfig, SearchSession, close_backends, make_backend, new_session
from toolgym.envs.search.engines import ENGINES, register_engine
from toolgym.envs.search.errors import (
    IndexCorruptError,
    IndexNotFoundError,
    QueryError,
    ReplayMissError,
    SearchError,
    SearchUnavailableError,
)
from toolgym.envs.search.index import Manifest, SearchIndex, build_index, open_index
from toolgym.envs.search.server import SearchServer, serve
from toolgym.envs.search.tools import open_document, search, used_search

__all__ = [
    "ENGINES", "Document", "Hit", "IndexCorruptError", "IndexInfo", "IndexNotFoundError", "Manifest", "QueryError",
    "Ranker", "ReplayMissError", "ResultCache", "SearchBackend", "SearchConfig", "SearchError", "SearchIndex",
    "SearchServer", "SearchSession", "SearchUnavailableError", "build_index", "close_backends", "make_backend",
    "new_session", "open_document", "open_index", "register_engine", "search", "serve", "used_search",
]
