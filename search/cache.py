"""Record/replay of search results, so runs are reproducible and tests run offline.

Results are keyed by ``(index version, operation, query, k)``. In ``record`` mode a miss asks the
backend and stores the answer; in ``replay`` mode only stored answers are served and a miss is an
error, so a replayed run provably saw exactly what the recorded run saw. The store is one SQLite
file (safe for many processes writing at once).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from toolgym.errors import ConfigError
from toolgym.search.errors import IndexCorruptError

CACHE_MODES = ("off", "record", "replay")


def cache_key(version: str, op: str, query: str, k: int) -> str:
    """Stable key of one request.

    Example:
        >>> cache_key("v1", "search", "q", 5) == cache_key("v1", "search", "q", 5) != cache_key("v2", "search", "q", 5)
        True
    """
    return hashlib.sha256(json.dumps([version, op, query, k], ensure_ascii=False).encode()).hexdigest()


class ResultCache:
    """A persistent result store.

    Example:
        >>> import tempfile
        >>> cache = ResultCache(tempfile.mkdtemp() + "/results.sqlite")
        >>> cache.put("v1", "search", "q", 5, [{"doc_id": "a"}])
        >>> cache.get("v1", "search", "q", 5), cache.get("v1", "search", "q", 3)
        ([{'doc_id': 'a'}], None)
        >>> cache.versions()
        ['v1']
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, version TEXT, op TEXT, "
                               "query TEXT, k INTEGER, value TEXT)")
        except sqlite3.Error as exc:
            raise IndexCorruptError(f"result cache {self.path} is unusable: {exc}") from None

    def get(self, version: str, op: str, query: str, k: int) -> Any:
        with self._lock:
            row = self._conn.execute("SELECT value FROM results WHERE key=?",
                                     (cache_key(version, op, query, k),)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, version: str, op: str, query: str, k: int, value: Any) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                               (cache_key(version, op, query, k), version, op, query, k,
                                json.dumps(value, ensure_ascii=False)))
            self._conn.commit()

    def versions(self) -> list[str]:
        """Index versions with recorded results (replay uses this when no index is reachable)."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT DISTINCT version FROM results ORDER BY version")]

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM results").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def check_mode(mode: str) -> str:
    if mode not in CACHE_MODES:
        raise ConfigError(f"unknown cache mode {mode!r}; choose from {', '.join(CACHE_MODES)}")
    return mode
