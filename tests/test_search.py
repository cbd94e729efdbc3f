"""Search: index build/open per engine, ranking, snippets, bad input, corrupt indexes, tools, caching."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import pytest

from toolgym.envs.search_tools import open_document, search
from toolgym.errors import ConfigError
from toolgym.search import (
    IndexCorruptError,
    IndexNotFoundError,
    QueryError,
    ReplayMissError,
    SearchConfig,
    SearchSession,
    build_index,
    open_index,
)
from toolgym.search.cache import ResultCache
from toolgym.search.text import MAX_QUERY_CHARS, query_terms, snippet, window

DOCS = [
    {"id": "vorlex", "title": "Vorlex Dynamics", "text": "Vorlex Dynamics is a shipbuilder founded in 1901 by "
     "Amra Quell in the port city of Tesmar. It builds icebreakers and research vessels."},
    {"id": "quell", "title": "Amra Quell", "text": "Amra Quell was an engineer born in Odrin. She founded "
     "Vorlex Dynamics and designed its first icebreaker."},
    {"id": "tesmar", "title": "Tesmar", "text": "Tesmar is a port city on the Grell coast, known for shipyards, "
     "fish markets and a lighthouse."},
    {"id": "odrin", "title": "Odrin", "text": "Odrin is a mountain town famous for cheese and clockmakers. " * 3},
    {"id": "long", "title": "Long Article", "text": " ".join(f"word{i}" for i in range(3000)) + " zanzibarite"},
]
ENGINES = ["fts5", "tantivy", pytest.param("bm25s", marks=pytest.mark.skipif(
    importlib.util.find_spec("bm25s") is None, reason="bm25s is not installed (optional engine)"))]
NASTY = ['"unbalanced', 'a AND OR NOT b', "NEAR(a b)", "title:vorlex", "vorlex*", "((( vorlex", "-vorlex", "^2",
         "vorlex\x00dynamics", "Vörlex — dynamïcs 🚢", "'; DROP TABLE docs; --", "a:b:c {x} [y TO z]", "\\ in",
         "+-&|! or", "東京 タワー", "a" * 300]


@pytest.fixture(scope="module", params=ENGINES)
def index_dir(request, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(request.param) / "index"
    build_index(DOCS, out, engines=[request.param])
    return out


@pytest.fixture()
def index(index_dir):
    idx = open_index(index_dir)
    yield idx
    idx.close()


def test_build_writes_manifest_and_reopens(index_dir):
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["num_docs"] == len(DOCS)
    first, second = open_index(index_dir), open_index(index_dir)
    assert first.info().version == second.info().version == manifest["version"]
    assert [h.doc_id for h in first.search("icebreakers shipbuilder", 2)] == \
        [h.doc_id for h in second.search("icebreakers shipbuilder", 2)]
    first.close(), second.close()


def test_ranking_title_and_rare_words(index):
    assert index.search("Tesmar", 3)[0].doc_id == "tesmar"  # title match wins over body mentions
    assert index.search("zanzibarite", 3)[0].doc_id == "long"
    hits = index.search("who founded Vorlex Dynamics", 5)
    assert hits[0].doc_id in {"vorlex", "quell"} and {h.doc_id for h in hits} >= {"vorlex", "quell"}
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    assert index.search("nonexistentword", 5) == []


def test_snippet_shows_the_match(index):
    hit = index.search("zanzibarite", 1)[0]
    assert "zanzibarite" in hit.snippet and len(hit.snippet) <= index.snippet_chars + 2


def test_batch_equals_single(index):
    queries = ["Tesmar lighthouse", "cheese clockmakers", "engineer Odrin"]
    batch = index.search_batch(queries, 3)
    assert batch == [index.search(q, 3) for q in queries]


@pytest.mark.parametrize("query", NASTY)
def test_query_syntax_never_breaks_the_engine(index, query):
    hits = index.search(query, 3)  # no exception: operators are plain words or dropped
    assert all(h.doc_id for h in hits)


@pytest.mark.parametrize("query", ["", "   ", "?!", "(((", "+-&|!", "x" * (MAX_QUERY_CHARS + 1)])
def test_empty_or_giant_query_is_a_query_error(index, query):
    with pytest.raises(QueryError):
        index.search(query, 3)


@pytest.mark.parametrize("k", [0, -1, 1000, "5", True])
def test_bad_k(index, k):
    with pytest.raises(QueryError):
        index.search("vorlex", k)


def test_get_document(index):
    assert index.get("tesmar").title == "Tesmar"
    with pytest.raises(QueryError, match="no document"):
        index.get("nope")


def test_query_terms_and_text_helpers():
    assert query_terms("The founder OF Vorlex?") == ["founder", "vorlex"]
    assert query_terms("x_y") == ["x", "y"]
    text = "intro. " * 50 + "The Vorlex yard was founded in 1901. " + "outro. " * 50
    assert "Vorlex" in snippet(text, ["vorlex"], 80)
    passage, start, end = window("alpha beta gamma delta", 0, 11)
    assert (passage, start, end) == ("alpha beta", 0, 10)
    with pytest.raises(QueryError):
        window("short", 99, 10)


# ---- corpus input and index files ----------------------------------------------------------------
def test_corpus_formats(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"id": d["id"], "title": d["title"], "text": d["text"]} for d in DOCS]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "c.parquet")
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
    versions = set()
    for source in (jsonl, tmp_path / "c.parquet", tmp_path / "ds"):
        out = tmp_path / f"idx-{source.name}"
        versions.add(build_index(source, out, engines=["fts5"]).version)
        assert open_index(out).search("lighthouse", 1)[0].doc_id == "tesmar"
    assert len(versions) == 1  # same content, same version, whatever the file format


@pytest.mark.parametrize("lines, message", [
    (['{"id": "a", "text": "x"}', "{not json"], "not valid JSON"),
    (['{"title": "no id", "text": "x"}'], "no id"),
    (['{"id": "a"}'], "no text"),
    (['{"id": "a", "text": "x"}', '{"id": "a", "text": "y"}'], "duplicate document id"),
])
def test_bad_corpus_is_a_clear_error_and_leaves_nothing(tmp_path, lines, message):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=message):
        build_index(corpus, tmp_path / "idx", engines=["fts5"])
    assert not (tmp_path / "idx").exists() and [p.name for p in tmp_path.iterdir()] == ["c.jsonl"]


def test_build_refuses_to_overwrite(tmp_path):
    build_index(DOCS[:2], tmp_path / "idx", engines=["fts5"])
    with pytest.raises(ConfigError, match="already exists"):
        build_index(DOCS[:3], tmp_path / "idx", engines=["fts5"])
    assert build_index(DOCS[:3], tmp_path / "idx", engines=["fts5"], overwrite=True).num_docs == 3


def test_missing_index(tmp_path):
    with pytest.raises(IndexNotFoundError, match="no search index"):
        open_index(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotFoundError, match="not a search index"):
        open_index(tmp_path / "empty")


@pytest.mark.parametrize("engine", ["fts5", "tantivy"])
@pytest.mark.parametrize("damage", ["manifest", "docstore", "engine"])
def test_corrupt_index_is_a_clear_error(tmp_path, engine, damage):
    out = tmp_path / "idx"
    build_index(DOCS, out, engines=[engine])
    if damage == "manifest":
        (out / "manifest.json").write_text("{truncated")
    elif damage == "docstore":
        (out / "docs.sqlite").write_bytes(b"garbage" * 100)
    elif engine == "fts5":
        (out / "fts5.sqlite").write_bytes(b"garbage" * 100)
    else:
        for f in (out / "tantivy").iterdir():
            if f.suffix in (".idx", ".term", ".store", ".fast"):
                f.write_bytes(b"\0" * 10)
    with pytest.raises(IndexCorruptError):
        idx = open_index(out)
        idx.search("vorlex", 3)


# ---- tools, sessions and caching ----------------------------------------------------------------
class CountingBackend:
    """Wraps a backend and counts the calls that reach it."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def info(self):
        return self.inner.info()

    def search_batch(self, queries, k):
        self.calls += 1
        return self.inner.search_batch(queries, k)

    def get(self, doc_id):
        self.calls += 1
        return self.inner.get(doc_id)

    def close(self):
        pass


def call(t, args, session):
    return asyncio.run(t.call(args, {"search_client": session}))


def test_tools_search_and_open(index):
    session = SearchSession(index, SearchConfig(index="x", open_chars=200))
    result = call(search, {"query": "port city lighthouse", "k": 2}, session)
    assert result.ok and "[tesmar] Tesmar" in result.content
    page = call(open_document, {"doc_id": "long"}, session)
    assert page.ok and page.content.startswith("[long] Long Article") and "offset=" in page.content
    offset = int(page.content.rsplit("offset=", 1)[1].rstrip("]"))
    nxt = call(open_document, {"doc_id": "long", "offset": offset}, session)
    assert nxt.ok and f"from character {offset}" in nxt.content


@pytest.mark.parametrize("tool_, args, message", [
    (search, {"query": ""}, "empty"),
    (search, {"query": "vorlex", "k": 99}, "k must be between"),
    (search, {"query": "x" * 5000}, "too long"),
    (open_document, {"doc_id": "missing"}, "no document"),
    (open_document, {"doc_id": "tesmar", "offset": 10**6}, "past the end"),
])
def test_tool_errors_reach_the_model(index, tool_, args, message):
    result = call(tool_, args, SearchSession(index, SearchConfig(index="x")))
    assert not result.ok and result.content.startswith("Error:") and message in result.content


def test_episode_memo_asks_the_backend_once(index):
    backend = CountingBackend(index)
    session = SearchSession(backend, SearchConfig(index="x"))
    first = call(search, {"query": "Odrin cheese"}, session).content
    assert call(search, {"query": "Odrin cheese"}, session).content == first
    call(open_document, {"doc_id": "odrin"}, session)
    call(open_document, {"doc_id": "odrin"}, session)
    assert backend.calls == 2


def test_record_then_replay_offline(tmp_path, index_dir):
    cache_path = str(tmp_path / "results.sqlite")
    index = open_index(index_dir)
    rec = SearchSession(index, SearchConfig(index="x", cache_mode="record", cache_path=cache_path))
    recorded = [call(search, {"query": "shipyards", "k": 3}, rec).content,
                call(open_document, {"doc_id": "quell"}, rec).content]
    assert ResultCache(cache_path).versions() == [index.info().version] and len(ResultCache(cache_path)) == 2
    # No backend at all: the recorded answers come back verbatim, anything else is a replay miss.
    replay = SearchSession(None, SearchConfig(cache_mode="replay", cache_path=cache_path))
    assert [call(search, {"query": "shipyards", "k": 3}, replay).content,
            call(open_document, {"doc_id": "quell"}, replay).content] == recorded
    miss = call(search, {"query": "shipyards", "k": 4}, replay)
    assert not miss.ok and ReplayMissError.__name__ in miss.content
    index.close()


def test_record_keys_include_index_version(tmp_path):
    cache_path = str(tmp_path / "results.sqlite")
    a = open_index(build_index(DOCS[:3], tmp_path / "a", engines=["fts5"]) and tmp_path / "a")
    b = open_index(build_index(DOCS, tmp_path / "b", engines=["fts5"]) and tmp_path / "b")
    for idx in (a, b):
        call(search, {"query": "vorlex"}, SearchSession(idx, SearchConfig(index="x", cache_mode="record",
                                                                          cache_path=cache_path)))
    assert sorted(ResultCache(cache_path).versions()) == sorted([a.info().version, b.info().version])


def test_config_validation():
    with pytest.raises(ConfigError, match="needs index"):
        SearchConfig().validate()
    with pytest.raises(ConfigError, match="backend must be"):
        SearchConfig(backend="cloud", index="x").validate()
    with pytest.raises(ConfigError, match="needs cache_path"):
        SearchConfig(index="x", cache_mode="record").validate()
    with pytest.raises(ConfigError, match="url"):
        SearchConfig(backend="server").validate()


@pytest.mark.parametrize("engine", ["fts5", "tantivy"])
def test_fuzzed_queries_only_ever_raise_query_errors(tmp_path, engine):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    build_index(DOCS, tmp_path / "idx", engines=[engine])
    idx = open_index(tmp_path / "idx")

    syntax = st.text(alphabet='"*()-+:^~{}[]\\/!&|\'. ANDORNEARvorlexé東', max_size=60)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.one_of(st.text(max_size=80), syntax))
    def check(query):
        try:
            hits = idx.search(query, 3)
        except QueryError:
            return
        assert len(hits) <= 3

    check()
    idx.close()


class ToyRanker:
    """A plug-in engine: ranks documents by how many query words their title contains."""

    name = "toy"

    def __init__(self, titles):
        self.titles = titles

    @classmethod
    def build(cls, rows, out_dir):
        (out_dir / "toy.json").write_text(json.dumps([title.lower().split() for _, title, _ in rows]))

    @classmethod
    def open(cls, out_dir):
        return cls(json.loads((out_dir / "toy.json").read_text()))

    def rank_batch(self, queries, k):
        out = []
        for q in queries:
            terms = set(query_terms(q))
            scored = [(row, float(len(terms & set(t)))) for row, t in enumerate(self.titles)]
            out.append(sorted([s for s in scored if s[1] > 0], key=lambda s: -s[1])[:k])
        return out

    def close(self):
        pass


def test_plug_in_engine(tmp_path):
    from toolgym.search import ENGINES, register_engine

    register_engine("toy", ToyRanker)
    try:
        build_index(DOCS, tmp_path / "idx", engines=["toy", "fts5"])
        toy, fts = open_index(tmp_path / "idx"), open_index(tmp_path / "idx", engine="fts5")
        assert toy.info().engines == ("toy",) and [h.doc_id for h in toy.search("amra quell", 3)] == ["quell"]
        assert fts.search("amra quell", 3)[0].doc_id == "quell" and len(fts.search("amra quell", 3)) > 1
    finally:
        ENGINES.pop("toy")
