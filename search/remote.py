"""The HTTP client of the search server, sync (``http.client``) and async (asyncio streams).

It implements :class:`~toolgym.search.base.SearchBackend`, so tools use a server exactly
like an embedded index. It keeps no connection or event-loop state between calls, so one
instance serves any number of threads and event loops. A server that cannot be reached or fails
becomes :class:`~toolgym.search.errors.SearchUnavailableError` after ``retries``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from typing import Any
from urllib.parse import urlsplit

from toolgym.errors import ConfigError
from toolgym.search.base import Document, Hit, IndexInfo
from toolgym.search.errors import QueryError, SearchError, SearchUnavailableError

_RETRY_STATUSES = (502, 503, 504)


class HttpBackend:
    """Talks to a ``toolgym search serve`` server at ``url``."""

    def __init__(self, url: str, timeout_s: float = 10.0, retries: int = 2, backoff_s: float = 0.2):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(f"search server url must look like http://HOST:PORT, got {url!r}")
        self.url = f"http://{parts.hostname}:{parts.port or 80}"
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._info: IndexInfo | None = None

    # ---- sync ------------------------------------------------------------------------------
    def _request(self, method: str, path: str, payload: Any = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                status, data = resp.status, resp.read()
            except (OSError, http.client.HTTPException) as exc:
                last = exc
            else:
                if status not in _RETRY_STATUSES:
                    return _decode(status, data, self.url)
                last = SearchUnavailableError(f"search server {self.url} answered {status}")
            finally:
                conn.close()
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise _unavailable(self.url, last)

    def info(self) -> IndexInfo:
        if self._info is None:
            data = self._request("GET", "/info")
            self._info = IndexInfo(version=data["version"], num_docs=data["num_docs"], mode=data.get("mode", ""),
                                   engines=tuple(data.get("engines", ())))
        return self._info

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def search_batch(self, queries: list[str], k: int) -> list[list[Hit]]:
        return _hits(self._request("POST", "/search", {"queries": queries, "k": k}))

    def get(self, doc_id: str) -> Document:
        return Document.from_dict(self._request("POST", "/open", {"doc_id": doc_id})["document"])

    # ---- async -----------------------------------------------------------------------------
    async def _arequest(self, method: str, path: str, payload: Any = None) -> Any:
        body = b"" if payload is None else json.dumps(payload).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                status, data = await asyncio.wait_for(self._exchange(head + body), self.timeout_s)
            except (OSError, TimeoutError, ValueError) as exc:
                last = exc
            else:
                if status not in _RETRY_STATUSES:
                    return _decode(status, data, self.url)
                last = SearchUnavailableError(f"search server {self.url} answered {status}")
            if attempt < self.retries:
                await asyncio.sleep(self.backoff_s * 2**attempt)
        raise _unavailable(self.url, last)

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                raise ValueError(f"bad status line {status_line[:80]!r}")
            length = None
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            data = await (reader.readexactly(length) if length is not None else reader.read())
            return int(parts[1]), data
        finally:
            writer.close()

    async def asearch_batch(self, queries: list[str], k: int) -> list[list[Hit]]:
        return _hits(await self._arequest("POST", "/search", {"queries": queries, "k": k}))

    async def aget(self, doc_id: str) -> Document:
        data = await self._arequest("POST", "/open", {"doc_id": doc_id})
        return Document.from_dict(data["document"])

    async def ainfo(self) -> IndexInfo:
        if self._info is None:
            data = await self._arequest("GET", "/info")
            self._info = IndexInfo(version=data["version"], num_docs=data["num_docs"], mode=data.get("mode", ""),
                                   engines=tuple(data.get("engines", ())))
        return self._info

    def close(self) -> None:
        self._info = None


def _decode(status: int, data: bytes, url: str) -> Any:
    try:
        obj = json.loads(data) if data else {}
    except ValueError:
        raise SearchUnavailableError(f"search server {url} sent a non-JSON answer (status {status})") from None
    if status == 200:
        return obj
    message = obj.get("error", f"status {status}") if isinstance(obj, dict) else f"status {status}"
    if status in (400, 404, 413):
        raise QueryError(message)
    raise SearchError(f"search server {url} failed: {message}")


def _hits(data: Any) -> list[list[Hit]]:
    return [[Hit.from_dict(h) for h in hits] for hits in data["results"]]


def _unavailable(url: str, cause: Exception | None) -> SearchUnavailableError:
    if isinstance(cause, SearchUnavailableError):
        return cause
    reason = f"{type(cause).__name__}: {cause}" if cause is not None else "no answer"
    return SearchUnavailableError(f"search server {url} is unreachable ({reason})")
