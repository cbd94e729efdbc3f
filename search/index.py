"""Building, persisting and opening a search index.

An index is a directory::

    manifest.json   what was built (engines, dense model, size, content version)
    docs.sqlite     the document store (every engine shares it)
    <engine>/...    one directory or file per lexical engine
    dense.npy       document embeddings (only with ``dense=True``)

It is built in a temporary sibling directory and renamed into place at the end, so a crashed
or interrupted build never leaves a half-written index where a reader could open it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolgym.errors import ConfigError
from toolgym.search.base import Document, Hit, IndexInfo, Ranker
from toolgym.search.corpus import read_corpus
from toolgym.search.docstore import DocStore, DocstoreWriter
from toolgym.search.engines import DEFAULT_ENGINE, available_engine, engine_class
from toolgym.search.errors import IndexCorruptError, IndexNotFoundError
from toolgym.search.text import check_k, query_terms, snippet

MANIFEST = "manifest.json"
INDEX_SCHEMA_VERSION = 1
MODES = ("lexical", "dense", "hybrid")


@dataclass(frozen=True)
class Manifest:
    """What an index directory holds."""

    version: str
    num_docs: int
    engines: list[str]
    dense_model: str | None = None
    corpus: str = ""
    build_s: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)
    schema_version: int = INDEX_SCHEMA_VERSION

    @classmethod
    def load(cls, index_dir: Path) -> Manifest:
        path = index_dir / MANIFEST
        if not index_dir.exists():
            raise IndexNotFoundError(f"no search index at {index_dir}: build one with "
                                     "`toolgym search build CORPUS OUT` or build_index()")
        if not path.is_file():
            raise IndexNotFoundError(f"{index_dir} is not a search index (no {MANIFEST})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            manifest = cls(**data)
        except (ValueError, TypeError) as exc:
            raise IndexCorruptError(f"{path} is damaged: {exc}") from None
        if manifest.schema_version != INDEX_SCHEMA_VERSION:
            raise IndexCorruptError(f"{index_dir} was built with index format {manifest.schema_version}; this "
                                    f"version reads format {INDEX_SCHEMA_VERSION}: rebuild it")
        return manifest


def build_index(corpus: str | Path | Iterable[Any], out_dir: str | Path, *, engines: Iterable[str] | None = None,
                dense: bool = False, dense_model: str | None = None, overwrite: bool = False,
                embedder: Any = None) -> Manifest:
    """Build a search index of ``corpus`` into ``out_dir``.

    Args:
        corpus: A JSONL/JSON/Parquet file, a saved dataset directory, or an iterable of records.
        out_dir: Where the index goes (must not exist unless ``overwrite``).
        engines: Lexical engines to build (default: the fastest installed one).
        dense: Also embed every document for dense and hybrid search.
        dense_model: Embedding model (default: the packaged all-MiniLM-L6-v2).
        overwrite: Replace an existing index at ``out_dir``.
        embedder: An already loaded :class:`~toolgym.search.dense.Embedder` to reuse.

    Example:
        >>> import tempfile
        >>> out = tempfile.mkdtemp() + "/idx"
        >>> m = build_index([{"id": "a", "title": "Alpha", "text": "first letter"}], out, engines=["fts5"])
        >>> m.num_docs, m.engines
        (1, ['fts5'])
        >>> open_index(out).search("letter", 3)[0].doc_id
        'a'
    """
    out = Path(out_dir)
    engines = list(engines) if engines is not None else [available_engine(DEFAULT_ENGINE)]
    if not engines and not dense:
        raise ConfigError("build at least one lexical engine or a dense index")
    classes = [engine_class(name) for name in engines]
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} already exists and is not empty (pass overwrite=True / --overwrite)")
    tmp = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    try:
        # One pass over the corpus: the first engine indexes rows as the store writes them.
        writer = DocstoreWriter(tmp / "docs.sqlite")
        stats: dict[str, float] = {}
        try:
            rows = writer.rows(read_corpus(corpus))
            if classes:
                classes[0].build(rows, tmp)
            else:
                for _ in rows:
                    pass
        except BaseException:
            writer.abort()
            raise
        num_docs, content_hash = writer.finish()
        stats[f"{classes[0].name if classes else 'docstore'}_s"] = time.perf_counter() - start
        store = DocStore(tmp / "docs.sqlite")
        for cls in classes[1:]:
            t0 = time.perf_counter()
            cls.build(store.iter_rows(), tmp)
            stats[f"{cls.name}_s"] = time.perf_counter() - t0
        model = None
        if dense:
            from toolgym.search.dense import DEFAULT_MODEL, DenseRanker

            model = dense_model or DEFAULT_MODEL
            t0 = time.perf_counter()
            DenseRanker.build(store.iter_rows(), tmp, model=model, embedder=embedder)
            stats["dense_s"] = time.perf_counter() - t0
        store.close()
        version = hashlib.sha256(f"{content_hash}|{','.join(engines)}|{model}".encode()).hexdigest()[:16]
        manifest = Manifest(version=version, num_docs=num_docs, engines=engines, dense_model=model,
                            corpus=str(corpus) if isinstance(corpus, (str, Path)) else "<records>",
                            build_s=time.perf_counter() - start, stats=stats)
        (tmp / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


class SearchIndex:
    """An opened index: a ranker over the document store, answering with hits and documents.

    Implements :class:`~toolgym.search.base.SearchBackend`; thread-safe for searching.
    """

    def __init__(self, index_dir: Path, manifest: Manifest, store: DocStore, ranker: Ranker, mode: str,
                 snippet_chars: int = 240):
        self.index_dir = index_dir
        self.manifest = manifest
        self.store = store
        self.ranker = ranker
        self.mode = mode
        self.snippet_chars = snippet_chars

    def info(self) -> IndexInfo:
        return IndexInfo(version=self.manifest.version, num_docs=self.manifest.num_docs, mode=self.mode,
                         engines=(self.ranker.name,))

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """Top-``k`` hits for one query."""
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Top-``k`` hits for each query, in one ranker call (the server batches through this)."""
        check_k(k)
        terms = [query_terms(q) for q in queries]  # validates every query before any work
        ranked = self.ranker.rank_batch(queries, k)
        docs = self.store.rows(sorted({row for hits in ranked for row, _ in hits}))
        out = []
        for words, hits in zip(terms, ranked, strict=True):
            out.append([Hit(doc_id=docs[row].doc_id, title=docs[row].title, score=round(score, 4),
                            snippet=snippet(docs[row].text, words, self.snippet_chars), rank=i + 1)
                        for i, (row, score) in enumerate(h for h in hits if h[0] in docs)])
        return out

    def get(self, doc_id: str) -> Document:
        return self.store.get(doc_id)

    def close(self) -> None:
        self.ranker.close()
        self.store.close()


def open_index(index_dir: str | Path, *, mode: str = "lexical", engine: str | None = None,
               snippet_chars: int = 240, embedder: Any = None) -> SearchIndex:
    """Open a built index for searching.

    Args:
        index_dir: The directory :func:`build_index` wrote.
        mode: ``lexical``, ``dense`` or ``hybrid`` (reciprocal-rank fusion of the two).
        engine: Which built lexical engine to use (default: the first one built).
        snippet_chars: Length of the snippet shown with each hit.
        embedder: An already loaded embedder to reuse (dense and hybrid modes).
    """
    path = Path(index_dir)
    manifest = Manifest.load(path)
    if mode not in MODES:
        raise ConfigError(f"unknown search mode {mode!r}; choose from {', '.join(MODES)}")
    store = DocStore(path / "docs.sqlite")
    rankers: list[Ranker] = []
    if mode in ("lexical", "hybrid"):
        if not manifest.engines:
            raise ConfigError(f"{path} has no lexical engine; open it with mode='dense'")
        name = engine or manifest.engines[0]
        if name not in manifest.engines:
            raise ConfigError(f"{path} was built with {manifest.engines}, not {name!r}")
        rankers.append(engine_class(name).open(path))
    if mode in ("dense", "hybrid"):
        from toolgym.search.dense import DenseRanker, FusionRanker

        rankers.append(DenseRanker.open(path, embedder=embedder))
        if mode == "hybrid":
            rankers = [FusionRanker(rankers)]
    return SearchIndex(path, manifest, store, rankers[0], mode, snippet_chars)
