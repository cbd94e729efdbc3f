"""``tantivy`` ranker: BM25 in a Rust inverted index (Lucene-like), built with all cores.

Only the row number is stored (as a fast field); titles and texts are indexed with English
stemming but kept once, in the document store.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from toolgym.search.errors import IndexCorruptError, IndexNotFoundError, require_engine_package
from toolgym.search.text import query_terms

TITLE_BOOST = 2.0
_DIR = "tantivy"


def _schema(tantivy):  # noqa: ANN001, ANN202
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field("row", stored=False, indexed=False, fast=True)
    builder.add_text_field("title", stored=False, tokenizer_name="en_stem", index_option="freq")
    builder.add_text_field("text", stored=False, tokenizer_name="en_stem", index_option="freq")
    return builder.build()


class TantivyRanker:
    """BM25 ranking with tantivy."""

    name = "tantivy"

    def __init__(self, index: object, path: Path):
        self.index = index
        self.path = path

    @classmethod
    def build(cls, rows: Iterable[tuple[int, str, str]], out_dir: Path, heap_mb: int = 256) -> None:
        tantivy = require_engine_package("tantivy")
        path = out_dir / _DIR
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        index = tantivy.Index(_schema(tantivy), path=str(path), reuse=False)
        writer = index.writer(heap_size=heap_mb * 1_000_000)
        for row, title, text in rows:
            doc = tantivy.Document()
            doc.add_unsigned("row", row)  # an unsigned fast field must get an unsigned value
            doc.add_text("title", title)
            doc.add_text("text", text)
            writer.add_document(doc)
        writer.commit()
        writer.wait_merging_threads()

    @classmethod
    def open(cls, out_dir: Path) -> TantivyRanker:
        tantivy = require_engine_package("tantivy")
        path = out_dir / _DIR
        if not path.is_dir():
            raise IndexNotFoundError(f"tantivy index missing: {path}")
        try:
            index = tantivy.Index.open(str(path))
            index.searcher()
        except Exception as exc:  # tantivy raises ValueError/OSError for damaged or missing segment files
            raise IndexCorruptError(f"tantivy index {path} is unreadable: {exc}") from None
        return cls(index, path)

    def rank_batch(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        searcher = self.index.searcher()  # type: ignore[attr-defined]
        out = []
        for q in queries:
            # Quoted words only: nothing a model writes can become tantivy query syntax.
            text = " ".join(f'"{t}"' for t in query_terms(q))
            query = self.index.parse_query(text, ["title", "text"], field_boosts={"title": TITLE_BOOST})  # type: ignore[attr-defined]
            hits = searcher.search(query, limit=k).hits
            rows = searcher.fast_field_values("row", [addr for _, addr in hits]) if hits else []
            out.append([(int(r), float(s)) for (s, _), r in zip(hits, rows, strict=True)])
        return out

    def close(self) -> None:
        self.index = None
