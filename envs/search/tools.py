"""The ``search`` and ``open`` tools.

Both take the episode's :class:`~toolgym.envs.search.client.SearchSession` as the hidden argument
``search_client`` (an env puts it in ``state.resources["search_client"]``), so the same tools work
over an embedded index, a server, or recorded results. Failures (an empty query, an unknown id,
a server that is down) reach the model as an error message; the episode goes on.
"""

from __future__ import annotations

from typing import Any

from toolgym.envs.search.base import Hit
from toolgym.envs.search.client import SearchSession
from toolgym.envs.search.text import window
from toolgym.envs.tools import tool


def format_hits(query: str, hits: list[Hit]) -> str:
    """Search results as the model reads them.

    Example:
        >>> print(format_hits("q", [Hit("d1", "Alpha", 2.0, "The first letter.", 1)]))
        1. [d1] Alpha
           The first letter.
    """
    if not hits:
        return f"No results for {query!r}. Try other words."
    return "\n".join(f"{h.rank}. [{h.doc_id}] {h.title}\n   {h.snippet}" for h in hits)


@tool(timeout=30.0, hidden=("search_client",))
async def search(query: str, search_client: SearchSession, k: int | None = None) -> str:
    """Search the document collection; returns the best matches with their ids and snippets.

    Args:
        query: Keywords to search for, e.g. "Vorlex Dynamics founder".
        k: How many results to return (default 5).
    """
    return format_hits(query, await search_client.search(query, k))


@tool(name="open", timeout=30.0, hidden=("search_client",))
async def open_document(doc_id: str, search_client: SearchSession, offset: int = 0) -> str:
    """Read a document by id (from search results), one passage at a time.

    Args:
        doc_id: The document id shown in brackets in search results.
        offset: Character position to start reading from (to continue a long document).
    """
    doc = await search_client.open(doc_id)
    passage, start, end = window(doc.text, offset, search_client.config.open_chars)
    head = f"[{doc.doc_id}] {doc.title}\n" if start == 0 else f"[{doc.doc_id}] {doc.title} (from character {start})\n"
    rest = doc.text[end:]
    resume = end + len(rest) - len(rest.lstrip())  # the next word, so the next window starts exactly there
    tail = f"\n[continues: call open with offset={resume}]" if rest.strip() else ""
    return head + passage + tail


def used_search(tool_calls: list[Any]) -> float:
    """Metric (weight 0 in a rubric): 1.0 if the episode called the search tool.

    Example:
        >>> from toolgym.envs.parsing import ToolCall
        >>> used_search([ToolCall(name="search", arguments={"query": "x"})]), used_search([])
        (1.0, 0.0)
    """
    return float(any(getattr(c, "name", None) == "search" for c in tool_calls))
