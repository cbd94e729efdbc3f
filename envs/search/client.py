"""Search configuration and the per-episode search client the tools use.

:class:`SearchConfig` says where results come from (an embedded index or a server) and how they
are cached. :func:`make_backend` opens the backend once per process and shares it across envs and
episodes; :class:`SearchSession` is the per-episode client: it validates requests, remembers
this episode's results (a repeated query is free) and records or replays results by
``(index version, query, k)``.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolgym.envs.search.base import Document, Hit, SearchBackend
from toolgym.envs.search.cache import ResultCache, check_mode
from toolgym.envs.search.errors import ReplayMissError, SearchError
from toolgym.envs.search.text import check_k, query_terms
from toolgym.errors import ConfigError

BACKENDS = ("embedded", "server")


@dataclass
class SearchConfig:
    """Where search results come from and how they are cached.

    Args:
        backend: ``embedded`` (open the index in this process) or ``server`` (HTTP, see ``url``).
        index: Index directory (embedded backend).
        url: Server address, e.g. ``http://127.0.0.1:8321`` (server backend).
        mode: ``lexical``, ``dense`` or ``hybrid`` (embedded backend; a server fixes its own).
        engine: Lexical engine to open (default: the index's first).
        k: Default number of results.
        max_k: Largest ``k`` a tool call may ask for.
        snippet_chars: Snippet length per hit (embedded backend).
        open_chars: Characters per ``open`` window.
        timeout_s: Per-request timeout (server backend).
        retries: Retries of a failed server request before the tool reports it.
        cache_path: SQLite file for recorded results (``cache_mode`` record/replay).
        cache_mode: ``off``, ``record`` or ``replay``.
        index_version: Version to key replayed results by when no backend is reachable.
    """

    backend: str = "embedded"
    index: str | None = None
    url: str | None = None
    mode: str = "lexical"
    engine: str | None = None
    k: int = 5
    max_k: int = 20
    snippet_chars: int = 240
    open_chars: int = 1500
    timeout_s: float = 10.0
    retries: int = 2
    cache_path: str | None = None
    cache_mode: str = "off"
    index_version: str | None = None

    def validate(self) -> SearchConfig:
        if self.backend not in BACKENDS:
            raise ConfigError(f"search backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "embedded" and not self.index and self.cache_mode != "replay":
            raise ConfigError("the embedded search backend needs index=PATH (build one with `toolgym search build`)")
        if self.backend == "server" and not self.url and self.cache_mode != "replay":
            raise ConfigError("the server search backend needs url=http://HOST:PORT")
        check_mode(self.cache_mode)
        if self.cache_mode != "off" and not self.cache_path:
            raise ConfigError(f"cache_mode={self.cache_mode!r} needs cache_path")
        check_k(self.k, self.max_k)
        return self


_OPEN: dict[tuple[Any, ...], SearchBackend] = {}  # shared backends (and result caches) of this process
_OPEN_LOCK = threading.Lock()


def make_backend(config: SearchConfig) -> SearchBackend:
    """The backend ``config`` names, opened once per process and shared (indexes are read-only)."""
    config.validate()
    if config.backend == "server":
        from toolgym.envs.search.remote import HttpBackend

        key: tuple[Any, ...] = ("server", config.url, config.timeout_s, config.retries)
        factory: Any = lambda: HttpBackend(str(config.url), config.timeout_s, config.retries)  # noqa: E731
    else:
        from toolgym.envs.search.index import open_index

        key = ("embedded", str(Path(str(config.index)).resolve()), config.mode, config.engine, config.snippet_chars)
        factory = lambda: open_index(str(config.index), mode=config.mode, engine=config.engine,  # noqa: E731
                                     snippet_chars=config.snippet_chars)
    with _OPEN_LOCK:
        if key not in _OPEN:
            _OPEN[key] = factory()
        return _OPEN[key]


def shared_cache(config: SearchConfig) -> ResultCache | None:
    """The result cache ``config`` names, one per file per process (``None`` when caching is off)."""
    if config.cache_mode == "off":
        return None
    key = ("cache", str(Path(str(config.cache_path)).resolve()))
    with _OPEN_LOCK:
        if key not in _OPEN:
            _OPEN[key] = ResultCache(str(config.cache_path))  # type: ignore[assignment]
        return _OPEN[key]  # type: ignore[return-value]


def close_backends() -> None:
    """Close every shared backend and cache (tests; long-lived processes switching indexes)."""
    with _OPEN_LOCK:
        for backend in _OPEN.values():
            backend.close()
        _OPEN.clear()


class SearchSession:
    """The search client of one episode (what the ``search`` and ``open`` tools receive).

    Example:
        >>> import tempfile
        >>> from toolgym.envs.search.index import build_index, open_index
        >>> out = tempfile.mkdtemp() + "/idx"
        >>> _ = build_index([{"id": "a", "title": "Alpha", "text": "first letter"}], out, engines=["fts5"])
        >>> session = SearchSession(open_index(out), SearchConfig(index=out))
        >>> [h.doc_id for h in session.search_sync("letter")]
        ['a']
    """

    def __init__(self, backend: SearchBackend | None, config: SearchConfig, cache: ResultCache | None = None):
        self.backend = backend
        self.config = config
        self.cache = cache if cache is not None else shared_cache(config)
        self.memo: dict[tuple[str, str, int], Any] = {}
        self.requests = 0  # backend or replay lookups this episode (memo hits excluded)
        self._version = config.index_version

    # ---- public API (async: tools run on the env's event loop) --------------------------------
    async def search(self, query: str, k: int | None = None) -> list[Hit]:
        k = check_k(self.config.k if k is None else k, self.config.max_k)
        query_terms(query)  # refuse empty/oversized queries before any cache or backend
        raw = await self._cached("search", query, k, lambda: self._backend_search(query, k))
        return [Hit.from_dict(h) for h in raw]

    async def open(self, doc_id: str) -> Document:
        if not isinstance(doc_id, str) or not doc_id.strip():
            raise SearchError("doc_id must be a non-empty string")
        raw = await self._cached("open", doc_id, 0, lambda: self._backend_get(doc_id))
        return Document.from_dict(raw)

    def search_sync(self, query: str, k: int | None = None) -> list[Hit]:
        """:meth:`search` for synchronous callers (not from inside a running event loop)."""
        return asyncio.run(self.search(query, k))

    def open_sync(self, doc_id: str) -> Document:
        return asyncio.run(self.open(doc_id))

    # ---- caching -------------------------------------------------------------------------------
    async def _cached(self, op: str, query: str, k: int, fetch: Any) -> Any:
        memo_key = (op, query, k)
        if memo_key in self.memo:
            return self.memo[memo_key]
        self.requests += 1
        if self.cache is None:
            value = await fetch()
        else:
            version = await self._index_version()
            value = self.cache.get(version, op, query, k)
            if value is None:
                if self.config.cache_mode == "replay":
                    raise ReplayMissError(f"no recorded result for {op}({query!r}, k={k}) on index {version}")
                value = await fetch()
                self.cache.put(version, op, query, k, value)
        self.memo[memo_key] = value
        return value

    async def _index_version(self) -> str:
        if self._version is None:
            recorded = self.cache.versions() if self.cache is not None else []
            if self.config.cache_mode == "replay" and len(recorded) == 1:
                self._version = recorded[0]  # replay needs no backend when the recording has one index
            else:
                self._version = (await self._call("info")).version
        return self._version

    async def _backend_search(self, query: str, k: int) -> list[dict[str, Any]]:
        hits = (await self._call("search_batch", [query], k))[0]
        return [h.to_dict() for h in hits]

    async def _backend_get(self, doc_id: str) -> dict[str, Any]:
        return (await self._call("get", doc_id)).to_dict()

    async def _call(self, method: str, *args: Any) -> Any:
        if self.backend is None:
            raise SearchError("no search backend is configured (replay-only session)")
        native = getattr(self.backend, "a" + method, None)  # the HTTP backend has async twins
        if native is not None:
            return await native(*args)
        return await asyncio.to_thread(getattr(self.backend, method), *args)


def new_session(config: SearchConfig) -> SearchSession:
    """A fresh episode client over the shared backend ``config`` names.

    In replay mode a backend that cannot be opened is not needed: recorded results suffice.
    """
    config.validate()
    try:
        backend: SearchBackend | None = make_backend(config)
    except SearchError:
        if config.cache_mode != "replay":
            raise
        backend = None
    return SearchSession(backend, config)
