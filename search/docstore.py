"""The document store: every indexed document by row number and by id, in one SQLite file.

Engines rank rows; the store turns rows into titles and snippets and serves ``open(doc_id)``.
It is written once at build time and then opened read-only, one connection per thread (SQLite
connections must not be shared across threads).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from toolgym.errors import ConfigError
from toolgym.search.base import Document
from toolgym.search.errors import IndexCorruptError, IndexNotFoundError, QueryError

_SCHEMA = "CREATE TABLE docs (row INTEGER PRIMARY KEY, doc_id TEXT NOT NULL UNIQUE, title TEXT, text TEXT)"
_BATCH = 4096


class DocstoreWriter:
    """Writes a new store; :meth:`rows` passes documents through while storing them (one corpus pass).

    The content hash covers ids, titles and texts in order: it is the index's content version.
    """

    def __init__(self, path: Path):
        path.unlink(missing_ok=True)
        self.conn = sqlite3.connect(path)
        # Build-time pragmas: the file is thrown away if the build fails, so durability is not needed.
        self.conn.execute("PRAGMA journal_mode=OFF")
        self.conn.execute("PRAGMA synchronous=OFF")
        self.conn.execute(_SCHEMA)
        self.digest = hashlib.sha256()
        self.count = 0
        self._batch: list[tuple[int, str, str, str]] = []

    def rows(self, docs: Iterable[Document]) -> Iterator[tuple[int, str, str]]:
        """Store each document and yield ``(row, title, text)`` for an engine builder."""
        for doc in docs:
            self.digest.update(f"{doc.doc_id}\x1f{doc.title}\x1f{doc.text}\x1e".encode("utf-8", "surrogatepass"))
            row = self.count
            self._batch.append((row, doc.doc_id, doc.title, doc.text))
            self.count += 1
            if len(self._batch) >= _BATCH:
                _insert(self.conn, self._batch)
                self._batch = []
            yield row, doc.title, doc.text

    def finish(self) -> tuple[int, str]:
        """Flush and close; returns ``(count, content hash)``."""
        try:
            if self._batch:
                _insert(self.conn, self._batch)
                self._batch = []
            self.conn.commit()
        finally:
            self.conn.close()
        return self.count, self.digest.hexdigest()

    def abort(self) -> None:
        self.conn.close()


def write_docstore(path: Path, docs: Iterable[Document]) -> tuple[int, str]:
    """Write ``docs`` to a new store at ``path``; returns ``(count, content hash)``."""
    writer = DocstoreWriter(path)
    try:
        for _ in writer.rows(docs):
            pass
    except BaseException:
        writer.abort()
        raise
    return writer.finish()


def _insert(conn: sqlite3.Connection, batch: list[tuple[int, str, str, str]]) -> None:
    try:
        conn.executemany("INSERT INTO docs VALUES (?, ?, ?, ?)", batch)
    except sqlite3.IntegrityError:
        seen: set[str] = set()
        for _, doc_id, _, _ in batch:
            if doc_id in seen or conn.execute("SELECT 1 FROM docs WHERE doc_id=?", (doc_id,)).fetchone():
                raise ConfigError(f"duplicate document id {doc_id!r} in the corpus") from None
            seen.add(doc_id)
        raise


class DocStore:
    """Read-only access to a document store.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "docs.sqlite"
        >>> write_docstore(p, [Document("a", "A", "alpha"), Document("b", "B", "beta")])[0]
        2
        >>> store = DocStore(p)
        >>> store.get("b").text, len(store)
        ('beta', 2)
    """

    def __init__(self, path: Path):
        if not path.is_file():
            raise IndexNotFoundError(f"document store missing: {path}")
        self.path = path
        self._local = threading.local()
        self._count = int(self._query("SELECT count(*) FROM docs")[0][0])

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            self._local.conn = conn
        return conn

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:  # "file is not a database", "no such table", "malformed"...
            raise IndexCorruptError(f"document store {self.path} is unreadable: {exc}") from None

    def __len__(self) -> int:
        return self._count

    def get(self, doc_id: str) -> Document:
        """The document with this id; :class:`QueryError` if there is none."""
        rows = self._query("SELECT doc_id, title, text FROM docs WHERE doc_id=?", (doc_id,))
        if not rows:
            raise QueryError(f"no document with id {doc_id!r}")
        return Document(*rows[0])

    def rows(self, rows: list[int]) -> dict[int, Document]:
        """Documents by row number (rows that do not exist are left out)."""
        if not rows:
            return {}
        marks = ",".join("?" * len(rows))
        found = self._query(f"SELECT row, doc_id, title, text FROM docs WHERE row IN ({marks})", tuple(rows))
        return {r: Document(d, t, x) for r, d, t, x in found}

    def iter_rows(self) -> Iterator[tuple[int, str, str]]:
        """Every ``(row, title, text)`` in row order, for engine builders."""
        last = -1
        while True:
            chunk = self._query("SELECT row, title, text FROM docs WHERE row > ? ORDER BY row LIMIT ?", (last, _BATCH))
            if not chunk:
                return
            yield from chunk
            last = chunk[-1][0]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
