"""The search server: one index shared by many rollout workers, over HTTP (stdlib asyncio).

Concurrent requests are coalesced: searches that arrive while the engine is busy (or within
``max_wait_ms`` of each other) go to the engine as one ``search_batch`` call, so throughput grows
with load instead of each request paying the per-call overhead. Endpoints::

    GET  /health   {"status": "ok", "version", "num_docs", "queries", "batches", "max_batch", ...}
    GET  /info     {"version", "num_docs", "mode", "engines"}
    POST /search   {"queries": [str, ...], "k": int}  ->  {"results": [[hit, ...], ...]}
    POST /open     {"doc_id": str}                    ->  {"document": {...}}

A bad query is a 400 with ``{"error": message}`` (the other queries of its batch are unaffected).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from toolgym.search.base import SearchBackend
from toolgym.search.errors import QueryError, SearchError
from toolgym.search.text import check_k, query_terms

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20
MAX_QUERIES_PER_REQUEST = 256
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
            500: "Internal Server Error"}


class _Batcher:
    """Collects searches from concurrent requests and runs them as engine batches."""

    def __init__(self, backend: SearchBackend, executor: ThreadPoolExecutor, max_batch: int, max_wait_s: float):
        self.backend = backend
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue: asyncio.Queue[tuple[str, int, asyncio.Future]] = asyncio.Queue()
        self.queries = self.batches = self.biggest = 0

    async def search(self, query: str, k: int) -> list[dict[str, Any]]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((query, k, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if self.queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                    except TimeoutError:
                        break
                else:
                    batch.append(self.queue.get_nowait())
            await self._flush(loop, batch)

    async def _flush(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[str, int, asyncio.Future]]) -> None:
        k = max(item[1] for item in batch)
        try:
            results = await loop.run_in_executor(self.executor, self.backend.search_batch, [b[0] for b in batch], k)
        except Exception as exc:  # the engine failed: every waiting request gets the error, the server lives
            for _, _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.queries += len(batch)
        self.batches += 1
        self.biggest = max(self.biggest, len(batch))
        for (_, want, fut), hits in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result([asdict(h) for h in hits[:want]])


class SearchServer:
    """An HTTP search server around a backend (normally an opened :class:`~.index.SearchIndex`).

    ``start()`` runs it on a background thread (tests, benchmarks, in-process workers);
    :func:`serve` runs it in the foreground.
    """

    def __init__(self, backend: SearchBackend, host: str = "127.0.0.1", port: int = 0, *, max_batch: int = 64,
                 max_wait_ms: float = 1.0, workers: int = 1):
        self.backend = backend
        self.host = host
        self.port = port
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="search-engine")
        self.started_at = time.time()
        self._batcher: _Batcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stats(self) -> dict[str, Any]:
        b = self._batcher
        info = self.backend.info()
        return {"status": "ok", "version": info.version, "num_docs": info.num_docs, "mode": info.mode,
                "queries": b.queries if b else 0, "batches": b.batches if b else 0,
                "max_batch": b.biggest if b else 0, "uptime_s": round(time.time() - self.started_at, 3)}

    async def run(self) -> None:
        """Serve until :meth:`stop` (or cancellation)."""
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._batcher = _Batcher(self.backend, self.executor, self.max_batch, self.max_wait_s)
        batch_task = asyncio.create_task(self._batcher.run())
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=MAX_BODY, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            self._server.close()
            batch_task.cancel()
            await asyncio.gather(batch_task, return_exceptions=True)

    def start(self, timeout_s: float = 10.0) -> SearchServer:
        """Run on a daemon thread; returns once the port is bound (``self.port`` is then real)."""
        def main() -> None:
            try:
                asyncio.run(self.run())
            except BaseException as exc:  # e.g. the port is taken: hand it to start()'s caller
                self._failure = exc
                self._ready.set()

        self._thread = threading.Thread(target=main, name="search-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise SearchError(f"search server did not start on {self.host}:{self.port} within {timeout_s}s")
        if self._failure is not None:
            raise SearchError(f"search server could not start on {self.host}:{self.port}: {self._failure}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.executor.shutdown(wait=False, cancel_futures=True)

    # ---- HTTP ------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, path, body, keep_alive = request
                status, payload = await self._route(method, path, body)
                data = json.dumps(payload, ensure_ascii=False).encode()
                writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(data)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}"
                             "\r\n\r\n".encode() + data)
                await writer.drain()
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # a client that hangs up or sends garbage loses its connection, nothing else
        finally:
            writer.close()

    async def _route(self, method: str, path: str, body: bytes | None) -> tuple[int, Any]:
        try:
            if path in ("/health", "/info"):
                if method != "GET":
                    return 405, {"error": f"{path} takes GET"}
                if path == "/health":
                    return 200, self.stats()
                return 200, {**asdict(self.backend.info()), "engines": list(self.backend.info().engines)}
            if path not in ("/search", "/open"):
                return 404, {"error": f"no endpoint {path}; try /health, /info, /search, /open"}
            if method != "POST":
                return 405, {"error": f"{path} takes POST"}
            if body is None:
                return 413, {"error": f"request body larger than {MAX_BODY} bytes"}
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                return 400, {"error": "request body is not valid JSON"}
            if not isinstance(request, dict):
                return 400, {"error": "request body must be a JSON object"}
            return await (self._search(request) if path == "/search" else self._open(request))
        except QueryError as exc:
            return 400, {"error": str(exc)}
        except SearchError as exc:
            return 500, {"error": str(exc)}
        except Exception as exc:  # never let one request take the server down
            log.exception("search request failed")
            return 500, {"error": f"{type(exc).__name__}: {exc}"}

    async def _search(self, request: dict[str, Any]) -> tuple[int, Any]:
        queries = request.get("queries", [request["query"]] if "query" in request else None)
        if not isinstance(queries, list) or not queries:
            return 400, {"error": 'give "queries": a non-empty list of strings'}
        if len(queries) > MAX_QUERIES_PER_REQUEST:
            return 400, {"error": f"at most {MAX_QUERIES_PER_REQUEST} queries per request"}
        k = check_k(request.get("k", 5))
        for q in queries:
            query_terms(q)  # reject bad queries before they reach a shared batch
        assert self._batcher is not None
        results = await asyncio.gather(*(self._batcher.search(q, k) for q in queries))
        return 200, {"results": results}

    async def _open(self, request: dict[str, Any]) -> tuple[int, Any]:
        doc_id = request.get("doc_id")
        if not isinstance(doc_id, str) or not doc_id:
            return 400, {"error": 'give "doc_id": a non-empty string'}
        loop = asyncio.get_running_loop()
        try:
            doc = await loop.run_in_executor(self.executor, self.backend.get, doc_id)
        except QueryError as exc:
            return 404, {"error": str(exc)}
        return 200, {"document": doc.to_dict()}


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes | None, bool] | None:
    line = await reader.readline()
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError("bad request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
        if len(headers) > 100:
            raise ValueError("too many headers")
    length = int(headers.get("content-length", "0") or 0)
    if length < 0:
        raise ValueError("bad content length")
    if length > MAX_BODY:  # drain it (so the client can read our answer), answer 413, then close
        if length > 64 * MAX_BODY:
            raise ValueError("request body far too large")
        while length > 0:
            length -= len(await reader.readexactly(min(length, 1 << 16)))
        return method.upper(), target.split("?", 1)[0], None, False
    body = await reader.readexactly(length) if length else b""
    conn = headers.get("connection", "").lower()
    keep_alive = conn == "keep-alive" or (version == "HTTP/1.1" and conn != "close")
    return method.upper(), target.split("?", 1)[0], body, keep_alive


def serve(index_dir: str, host: str = "127.0.0.1", port: int = 8321, *, mode: str = "lexical",
          engine: str | None = None, max_batch: int = 64, max_wait_ms: float = 1.0) -> None:
    """Serve an index in the foreground until interrupted (``toolgym search serve``)."""
    from toolgym.search.index import open_index

    index = open_index(index_dir, mode=mode, engine=engine)
    server = SearchServer(index, host, port, max_batch=max_batch, max_wait_ms=max_wait_ms)

    async def main() -> None:
        task = asyncio.create_task(server.run())
        while not server._ready.is_set() and not task.done():
            await asyncio.sleep(0.01)
        if not task.done():
            info = index.info()
            print(f"serving {index_dir} ({info.num_docs} documents, {info.mode}/{','.join(info.engines)}, "
                  f"version {info.version}) on {server.url}", flush=True)
        await task

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        index.close()
