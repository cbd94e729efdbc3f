"""SQLite FTS5 ranker: BM25 from the standard library, no extra dependency.

The FTS table is contentless (``content=''``): it holds only the inverted index, and the text
lives once, in the document store. Queries are OR-ed quoted words (see :mod:`.text`), so no FTS5
query syntax from the model ever reaches the parser.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from toolgym.search.errors import IndexCorruptError, IndexNotFoundError
from toolgym.search.text import query_terms

TITLE_WEIGHT = 2.0  # a match in the title counts twice a match in the body (bm25() column weights)
_FILE = "fts5.sqlite"


class Fts5Ranker:
    """BM25 ranking with SQLite FTS5 (porter stemming, unicode folding)."""

    name = "fts5"

    def __init__(self, path: Path):
        if not path.is_file():
            raise IndexNotFoundError(f"FTS5 index missing: {path}")
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._sql = (f"SELECT rowid, -bm25(fts, {TITLE_WEIGHT}, 1.0) FROM fts WHERE fts MATCH ? "
                     f"ORDER BY bm25(fts, {TITLE_WEIGHT}, 1.0) LIMIT ?")
        self._run("SELECT rowid FROM fts LIMIT 1", ())  # fail now, not mid-episode, if unreadable

    @classmethod
    def build(cls, rows: Iterable[tuple[int, str, str]], out_dir: Path) -> None:
        """Index ``(row, title, text)`` triples into ``out_dir``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / _FILE
        path.unlink(missing_ok=True)
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("CREATE VIRTUAL TABLE fts USING fts5(title, text, content='', "
                         "tokenize='porter unicode61 remove_diacritics 2')")
            # A bigger in-memory segment before flushing means fewer segments to merge.
            conn.execute("INSERT INTO fts(fts, rank) VALUES('pgsz', 4000)")
            conn.execute("INSERT INTO fts(fts, rank) VALUES('automerge', 16)")
            conn.executemany("INSERT INTO fts(rowid, title, text) VALUES (?, ?, ?)", rows)
            conn.execute("INSERT INTO fts(fts) VALUES('optimize')")  # one segment: fastest queries
            conn.commit()
        finally:
            conn.close()

    @classmethod
    def open(cls, out_dir: Path) -> Fts5Ranker:
        return cls(out_dir / _FILE)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _run(self, sql: str, params: tuple) -> list[tuple]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise IndexCorruptError(f"FTS5 index {self.path} is unreadable: {exc}") from None

    def rank_batch(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        out = []
        for q in queries:
            match = " OR ".join(f'"{t}"' for t in query_terms(q))
            out.append([(int(r), float(s)) for r, s in self._run(self._sql, (match, k))])
        return out

    def close(self) -> None:
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()
