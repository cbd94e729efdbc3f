"""``bm25s`` ranker: BM25 over a precomputed sparse score matrix (numpy/scipy).

Documents are tokenised with the same word rule as queries (lowercase words, stopwords dropped,
no stemming), so a query word matches exactly the document words it spells.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from toolgym.search.errors import IndexCorruptError, IndexNotFoundError, require_engine_package
from toolgym.search.text import STOPWORDS, query_terms

_WORD = re.compile(r"[^\W_]+")  # the query word rule (see text.py)
_DIR = "bm25s"


def tokens(text: str) -> list[str]:
    """Document tokens: lowercase words without stopwords.

    Example:
        >>> tokens("The Vorlex company, founded 1901")
        ['vorlex', 'company', 'founded', '1901']
    """
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


class Bm25sRanker:
    """BM25 ranking with the ``bm25s`` sparse-matrix engine."""

    name = "bm25s"

    def __init__(self, retriever: object, path: Path):
        self.retriever = retriever
        self.path = path
        self.num_docs = int(retriever.scores["num_docs"])  # type: ignore[attr-defined]

    @classmethod
    def build(cls, rows: Iterable[tuple[int, str, str]], out_dir: Path) -> None:
        bm25s = require_engine_package("bm25s")
        corpus = []
        for row, title, text in rows:
            if row != len(corpus):
                raise ValueError("rows must arrive in order 0, 1, 2, ...")
            corpus.append(tokens(f"{title} {title} {text}"))  # title twice: a title match weighs more
        retriever = bm25s.BM25()
        retriever.index(corpus, show_progress=False)
        retriever.save(str(out_dir / _DIR), show_progress=False)

    @classmethod
    def open(cls, out_dir: Path) -> Bm25sRanker:
        bm25s = require_engine_package("bm25s")
        path = out_dir / _DIR
        if not path.is_dir():
            raise IndexNotFoundError(f"bm25s index missing: {path}")
        try:
            retriever = bm25s.BM25.load(str(path), mmap=False)
        except Exception as exc:  # missing/garbled .npy or .json files surface as many types
            raise IndexCorruptError(f"bm25s index {path} is unreadable: {exc}") from None
        return cls(retriever, path)

    def rank_batch(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        out = []
        for q in queries:
            ids = self.retriever.get_tokens_ids(query_terms(q))  # type: ignore[attr-defined]
            if not ids:
                out.append([])
                continue
            scores = self.retriever.get_scores_from_ids(ids)  # type: ignore[attr-defined]  # [N]
            n = min(k, len(scores))
            top = np.argpartition(-scores, n - 1)[:n]
            top = top[np.argsort(-scores[top], kind="stable")]
            out.append([(int(i), float(scores[i])) for i in top if scores[i] > 0])
        return out

    def close(self) -> None:
        self.retriever = None
