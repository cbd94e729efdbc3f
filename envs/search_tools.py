"""The ``search`` and ``open`` tools, over :mod:`toolgym.search`.

Both take the episode's :class:`~toolgym.search.client.SearchSession` as the hidden argument
``search_client`` (an env puts it in ``state.resources["search_client"]``), so the same tools work
over an embedded index, a server, or recorded results. Failures (an empty query, an unknown id,
a server that is down) reach the model as an error message; the episode goes on.
"""

from __future__ import annotations

from typing import Any

from toolgym.envs.tools import Tool, tool
from toolgym.search.client import SearchSession
from toolgym.search.text import format_hits, window

__all__ = ["SEARCH_TOOLS", "format_hits", "open_document", "search", "used_search"]


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


SEARCH_TOOLS: tuple[Tool, ...] = (search, open_document)


def used_search(tool_calls: list[Any]) -> float:
    """Metric (weight 0 in a rubric): 1.0 if the episode called the search tool.

    Example:
        >>> from toolgym.envs.parsing import ToolCall
        >>> used_search([ToolCall(name="search", arguments={"query": "x"})]), used_search([])
        (1.0, 0.0)
    """
    return float(any(getattr(c, "name", None) == "search" for c in tool_calls))
