"""Search configuration and the per-episode search client the tools use.

:class:`SearchConfig` says where results come from (an embedded index or a server) and how they
are cached. :class:`SearchBackends` opens each backend once and shares it across envs and episodes
until it is closed (:func:`make_backend` uses the process-wide :data:`DEFAULT_BACKENDS`);
:class:`SearchSession` is the per-episode client: it validates requests, remembers
this episode's results (a repeated query is free) and records or replays results by
``(index version, query, k)``.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolgym.errors import ConfigError
from toolgym.search.base import Document, Hit, SearchBackend
from toolgym.search.cache import ResultCache, check_mode
from toolgym.search.errors import ReplayMissError, SearchError
from toolgym.search.text import check_k, query_terms

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


def _backend_opener(config: SearchConfig) -> tuple[tuple[Any, ...], Callable[[], SearchBackend]]:
    """(identity, opener) of the backend ``config`` names: equal identities share one open backend."""
    if config.backend == "server":
        from toolgym.search.remote import HttpBackend

        return (("server", config.url, config.timeout_s, config.retries),
                lambda: HttpBackend(str(config.url), config.timeout_s, config.retries))
    from toolgym.search.index import open_index

    return (("embedded", str(Path(str(config.index)).resolve()), config.mode, config.engine, config.snippet_chars),
            lambda: open_index(str(config.index), mode=config.mode, engine=config.engine,
                               snippet_chars=config.snippet_chars))


class SearchBackends:
    """Open search backends and result caches, one per distinct configuration, closed together.

    Indexes are read-only, so every env and episode with the same index (or server) shares one
    open backend. :meth:`close` closes them all and refuses later requests with a
    :class:`~toolgym.search.errors.SearchError`; :meth:`clear` closes them but keeps the holder
    usable. :data:`DEFAULT_BACKENDS` is the process-wide holder, closed at interpreter exit.

    Example:
        >>> import tempfile
        >>> from toolgym.search.index import build_index
        >>> out = tempfile.mkdtemp() + "/idx"
        >>> _ = build_index([{"id": "a", "title": "Alpha", "text": "first letter"}], out, engines=["fts5"])
        >>> with SearchBackends() as backends:
        ...     session = backends.session(SearchConfig(index=out))
        ...     [h.doc_id for h in session.search_sync("letter")], len(backends)
        (['a'], 1)
        >>> backends.backend(SearchConfig(index=out))
        Traceback (most recent call last):
        ...
        toolgym.search.errors.SearchError: these search backends are closed (SearchBackends.close() was called)
    """

    def __init__(self) -> None:
        self._open: dict[tuple[Any, ...], Any] = {}  # backends and result caches, by identity
        self._lock = threading.Lock()
        self._closed = False

    def _get(self, key: tuple[Any, ...], opener: Callable[[], Any]) -> Any:
        with self._lock:
            if self._closed:
                raise SearchError("these search backends are closed (SearchBackends.close() was called)")
            if key not in self._open:
                self._open[key] = opener()
            return self._open[key]

    def backend(self, config: SearchConfig) -> SearchBackend:
        """The backend ``config`` names, opened on first use and shared.

        Raises:
            ConfigError: ``config`` is invalid.
            SearchError: The holder is closed, or the index cannot be opened.
        """
        config.validate()
        key, opener = _backend_opener(config)
        return self._get(key, opener)

    def cache(self, config: SearchConfig) -> ResultCache | None:
        """The result cache ``config`` names, one per file (``None`` when caching is off)."""
        if config.cache_mode == "off":
            return None
        return self._get(("cache", str(Path(str(config.cache_path)).resolve())),
                         lambda: ResultCache(str(config.cache_path)))

    def session(self, config: SearchConfig) -> SearchSession:
        """A fresh episode client over this holder's backend and cache for ``config``.

        In replay mode a backend that cannot be opened is not needed: recorded results suffice.
        """
        config.validate()
        try:
            backend: SearchBackend | None = self.backend(config)
        except SearchError:
            if config.cache_mode != "replay" or self._closed:
                raise
            backend = None
        return SearchSession(backend, config, cache=self.cache(config))

    def clear(self) -> None:
        """Close every backend and cache opened so far; later requests open fresh ones."""
        with self._lock:
            opened = list(self._open.values())
            self._open.clear()
        for item in opened:
            item.close()

    def close(self) -> None:
        """Close everything and refuse later requests; idempotent."""
        with self._lock:
            self._closed = True
        self.clear()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __len__(self) -> int:
        """How many backends and caches are open."""
        with self._lock:
            return len(self._open)

    def __enter__(self) -> SearchBackends:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SearchSession:
    """The search client of one episode (what the ``search`` and ``open`` tools receive).

    Example:
        >>> import tempfile
        >>> from toolgym.search.index import build_index, open_index
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


DEFAULT_BACKENDS = SearchBackends()
"""The process-wide backends behind :func:`make_backend` and :func:`new_session`; closed at exit."""
atexit.register(DEFAULT_BACKENDS.close)


def make_backend(config: SearchConfig) -> SearchBackend:
    """The :data:`DEFAULT_BACKENDS` backend ``config`` names, opened once per process and shared."""
    return DEFAULT_BACKENDS.backend(config)


def shared_cache(config: SearchConfig) -> ResultCache | None:
    """The :data:`DEFAULT_BACKENDS` result cache ``config`` names (``None`` when caching is off)."""
    return DEFAULT_BACKENDS.cache(config)


def close_backends() -> None:
    """Close every :data:`DEFAULT_BACKENDS` backend and cache (tests; processes switching indexes)."""
    DEFAULT_BACKENDS.clear()


def new_session(config: SearchConfig) -> SearchSession:
    """A fresh episode client over the :data:`DEFAULT_BACKENDS` backend ``config`` names.

    In replay mode a backend that cannot be opened is not needed: recorded results suffice.
    """
    return DEFAULT_BACKENDS.session(config)
