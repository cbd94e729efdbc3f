"""Search server: HTTP API, request coalescing, failures, and the CLI commands."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time

import pytest

from toolgym.envs.search_tools import search
from toolgym.search import (
    QueryError,
    SearchConfig,
    SearchServer,
    SearchSession,
    SearchUnavailableError,
    build_index,
    open_index,
)
from toolgym.search.cli import main as cli_main
from toolgym.search.remote import HttpBackend

DOCS = [{"id": f"d{i}", "title": f"Entry {i}", "text": f"Entry {i} mentions token{i} and the shared word harbor."}
        for i in range(40)]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    out = tmp_path_factory.mktemp("srv") / "index"
    build_index(DOCS, out, engines=["fts5"])
    idx = open_index(out)
    yield idx
    idx.close()


@pytest.fixture()
def server(index):
    srv = SearchServer(index, port=0).start()
    yield srv
    srv.stop()


def raw(server, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def test_health_info_search_open(server, index):
    status, health = raw(server, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["num_docs"] == len(DOCS)
    client = HttpBackend(server.url)
    assert client.info().version == index.info().version
    assert client.search_batch(["token7", "token9"], 3) == index.search_batch(["token7", "token9"], 3)
    assert client.get("d3").text == index.get("d3").text
    assert asyncio.run(client.asearch_batch(["token7"], 2)) == index.search_batch(["token7"], 2)


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/search", b"{bad json", 400, "not valid JSON"),
    ("POST", "/search", b'{"queries": []}', 400, "non-empty list"),
    ("POST", "/search", b'{"queries": [""]}', 400, "empty"),
    ("POST", "/search", b'{"queries": ["ok"], "k": 0}', 400, "k must be"),
    ("POST", "/search", json.dumps({"queries": ["x" * 5000]}).encode(), 400, "too long"),
    ("POST", "/open", b'{"doc_id": "nope"}', 404, "no document"),
    ("GET", "/search", None, 405, "POST"),
    ("GET", "/nowhere", None, 404, "no endpoint"),
    ("POST", "/search", b"x" * (2 << 20), 413, "larger than"),
])
def test_bad_requests_get_clear_errors(server, method, path, body, status, message):
    got, payload = raw(server, method, path, body)
    assert got == status and message in payload["error"]
    assert raw(server, "GET", "/health")[0] == 200  # and the server is still fine


def test_client_maps_errors(server):
    client = HttpBackend(server.url)
    with pytest.raises(QueryError, match="empty"):
        client.search_batch([""], 3)
    with pytest.raises(QueryError, match="no document"):
        client.get("nope")


def test_garbage_connection_does_not_hurt_the_server(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        sock.recv(100)
    assert raw(server, "GET", "/health")[0] == 200


class SlowBackend:
    """The first engine call blocks until released, so the requests behind it pile up."""

    def __init__(self, inner):
        self.inner, self.batches, self.release = inner, [], threading.Event()

    def info(self):
        return self.inner.info()

    def search_batch(self, queries, k):
        self.batches.append(len(queries))
        if len(self.batches) == 1:
            self.release.wait(10)
        return self.inner.search_batch(queries, k)

    def get(self, doc_id):
        return self.inner.get(doc_id)

    def close(self):
        pass


def test_concurrent_requests_are_coalesced(index):
    backend = SlowBackend(index)
    srv = SearchServer(backend, port=0, max_wait_ms=0).start()
    try:
        client = HttpBackend(srv.url, timeout_s=60, retries=0)

        async def burst():
            first = asyncio.create_task(client.asearch_batch(["token1"], 2))
            while not backend.batches:
                await asyncio.sleep(0.005)
            rest = [asyncio.create_task(client.asearch_batch([f"token{i}"], 2)) for i in range(2, 12)]
            deadline = time.monotonic() + 30
            while srv._batcher.queue.qsize() < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)  # wait until all ten are queued behind the blocked call
            backend.release.set()
            return await asyncio.gather(first, *rest)

        results = asyncio.run(burst())
        assert [r[0][0].doc_id for r in results] == [f"d{i}" for i in range(1, 12)]
        assert backend.batches[0] == 1 and max(backend.batches[1:]) > 1 and sum(backend.batches) == 11
        assert srv.stats()["max_batch"] == max(backend.batches)
    finally:
        backend.release.set()
        srv.stop()


def test_server_down_mid_episode_is_a_tool_error(index):
    srv = SearchServer(index, port=0).start()
    session = SearchSession(HttpBackend(srv.url, timeout_s=2, retries=1, backoff_s=0.01),
                            SearchConfig(backend="server", url=srv.url))
    ok = asyncio.run(search.call({"query": "token3"}, {"search_client": session}))
    assert ok.ok and "[d3]" in ok.content
    srv.stop()
    down = asyncio.run(search.call({"query": "token4"}, {"search_client": session}))
    assert not down.ok and "SearchUnavailableError" in down.content and "unreachable" in down.content
    with pytest.raises(SearchUnavailableError):
        HttpBackend(srv.url, retries=0).search_batch(["token4"], 3)


def test_server_stats_count_queries(server):
    client = HttpBackend(server.url)
    before = server.stats()["queries"]
    client.search_batch(["token1", "token2", "token3"], 2)
    assert server.stats()["queries"] == before + 3


# ---- CLI -----------------------------------------------------------------------------------------
def test_cli_build_and_query(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps(d) for d in DOCS))
    assert cli_main(["search", "build", str(corpus), str(tmp_path / "idx"), "--engine", "fts5"]) == 0
    assert "indexed 40 documents" in capsys.readouterr().out
    assert cli_main(["search", "query", str(tmp_path / "idx"), "token5", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["doc_id"] == "d5"


@pytest.mark.parametrize("argv, message", [
    (["search", "build", "/nonexistent/corpus.jsonl", "OUT"], "corpus not found"),
    (["search", "query", "/nonexistent/index", "q"], "no search index"),
    (["search", "serve", "/nonexistent/index"], "no search index"),
    (["search", "build", "CORPUS.txt", "OUT"], "unknown corpus format"),
    (["search", "query", "http://127.0.0.1:9", "q"], "unreachable"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "CORPUS.txt").write_text("x")
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_cli_serve_port_in_use(tmp_path, capsys, index):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        start = time.perf_counter()
        assert cli_main(["search", "serve", str(index.index_dir), "--port", str(port)]) == 2
        assert "error:" in capsys.readouterr().err and time.perf_counter() - start < 60


def test_start_on_a_taken_port_fails_fast(index):
    from toolgym.search import SearchError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(SearchError, match="could not start"):
            SearchServer(index, port=busy.getsockname()[1]).start()
