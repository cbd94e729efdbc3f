"""Search records and the two interfaces everything else is written against.

* :class:`Ranker` ranks the rows of a document store for a query. Lexical engines (SQLite FTS5,
  ``bm25s``, ``tantivy``), the dense engine and fusion are rankers; a new engine plugs in by
  implementing it (and a builder, see :mod:`toolgym.search.engines`).
* :class:`SearchBackend` answers the tools: ``search`` returns :class:`Hit` records with snippets
  and ``get`` returns a :class:`Document`. The embedded index and the HTTP client both are one,
  so tools do not know (or care) whether the index is in-process or behind a server.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

SEARCH_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Document:
    """One corpus document.

    Example:
        >>> Document("d1", "Title", "Body text.").to_dict()["title"]
        'Title'
    """

    doc_id: str
    title: str
    text: str
    schema_version: int = SEARCH_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Document:
        return cls(doc_id=str(data["doc_id"]), title=str(data.get("title", "")), text=str(data.get("text", "")))


@dataclass(frozen=True)
class Hit:
    """One search result: which document, how well it matched, and a snippet around the match.

    Example:
        >>> Hit.from_dict(Hit("d1", "T", 1.5, "...", 1).to_dict()).score
        1.5
    """

    doc_id: str
    title: str
    score: float
    snippet: str
    rank: int
    schema_version: int = SEARCH_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hit:
        return cls(doc_id=str(data["doc_id"]), title=str(data.get("title", "")), score=float(data.get("score", 0.0)),
                   snippet=str(data.get("snippet", "")), rank=int(data.get("rank", 0)))


@dataclass(frozen=True)
class IndexInfo:
    """What a backend serves: the index version (content hash) and its size."""

    version: str
    num_docs: int
    mode: str = "lexical"
    engines: tuple[str, ...] = field(default_factory=tuple)


@runtime_checkable
class Ranker(Protocol):
    """Ranks document-store rows (0-based row numbers) for queries; best first."""

    name: str

    def rank_batch(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        """For each query, up to ``k`` ``(row, score)`` pairs, higher score better."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SearchBackend(Protocol):
    """What the search tools talk to: an embedded index or a server client."""

    def info(self) -> IndexInfo: ...

    def search_batch(self, queries: list[str], k: int) -> list[list[Hit]]: ...

    def get(self, doc_id: str) -> Document: ...

    def close(self) -> None: ...
