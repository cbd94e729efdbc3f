"""Query analysis, snippets and passage windows, shared by every engine.

Queries are reduced to plain lowercase words before any engine sees them, so operator syntax
(quotes, ``AND``/``NEAR``, ``field:``, ``*``, parentheses) can never reach an engine's parser and
break it: every engine receives the same bag of words. Snippets are made here too, the same way
for every engine, so switching engines changes rankings only.
"""

from __future__ import annotations

import re

from toolgym.search.base import Hit
from toolgym.search.errors import QueryError

MAX_QUERY_CHARS = 2_000
MAX_QUERY_TERMS = 32
MAX_K = 50
_WORD = re.compile(r"[^\W_]+")  # letters and digits: "_" separates words, as in the engines' tokenizers

# A short English stopword list: dropping these keeps OR-queries from matching the whole corpus
# (which costs latency in every engine) without changing what a query is about.
STOPWORDS = frozenset(
    "a an and are as at be but by for from had has have he her his i if in into is it its of on or she so "
    "than that the their them then there these they this to was were what when where which who whom whose "
    "why will with would how did does do you your we our not no".split()
)


def query_terms(query: str) -> list[str]:
    """The words a query searches for: lowercase, deduplicated, stopwords dropped.

    Raises :class:`QueryError` for a query that is not a string, too long, or has no words.

    Example:
        >>> query_terms('Who founded "Acme" AND (Vorlex*)?')
        ['founded', 'acme', 'vorlex']
        >>> query_terms("the of")  # only stopwords: keep them rather than search for nothing
        ['the', 'of']
    """
    if not isinstance(query, str):
        raise QueryError(f"query must be a string, got {type(query).__name__}")
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"query is too long ({len(query)} characters; the limit is {MAX_QUERY_CHARS})")
    words = [w.lower() for w in _WORD.findall(query)]
    if not words:
        raise QueryError("query has no searchable words" if query.strip() else "query is empty")
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    unique = list(seen)
    content = [w for w in unique if w not in STOPWORDS]
    return (content or unique)[:MAX_QUERY_TERMS]


def check_k(k: int, max_k: int = MAX_K) -> int:
    """Validate a result count.

    Example:
        >>> check_k(5)
        5
    """
    if isinstance(k, bool) or not isinstance(k, int):
        raise QueryError(f"k must be an integer, got {type(k).__name__}")
    if not 1 <= k <= max_k:
        raise QueryError(f"k must be between 1 and {max_k}, got {k}")
    return k


def snippet(text: str, terms: list[str], width: int = 240) -> str:
    """The ``width``-character window of ``text`` with the most query-term occurrences.

    Matching is by word prefix, so a query word ``found`` also lights up ``founded`` (engines stem).

    Example:
        >>> snippet("aaa bbb. The Vorlex company was founded in 1901. ccc ddd", ["vorlex", "founded"], 40)
        '…The Vorlex company was founded in 1901.…'
    """
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    stems = tuple(t[:5] for t in terms if t)
    hits = [m.start() for m in _WORD.finditer(text) if stems and m.group().lower().startswith(stems)]
    if not hits:
        start = 0
    else:
        best, start, j = -1, 0, 0
        for i, pos in enumerate(hits):  # two-pointer: most hits in [pos, pos + width)
            while j < len(hits) and hits[j] < pos + width:
                j += 1
            if j - i > best:
                best, start = j - i, pos
        start = _sentence_start(text, start, width)
    end = min(len(text), start + width)
    start = max(0, end - width) if end == len(text) else start
    return ("…" if start > 0 else "") + text[start:end].strip() + ("…" if end < len(text) else "")


def _sentence_start(text: str, pos: int, width: int) -> int:
    # Begin at the start of the sentence holding the first hit when it is close, so snippets read well.
    back = text.rfind(". ", max(0, pos - width // 3), pos)
    return back + 2 if back != -1 else pos


def format_hits(query: str, hits: list[Hit]) -> str:
    """Search results as the model reads them (the ``search`` tool and ``toolgym search query`` print this).

    Example:
        >>> print(format_hits("q", [Hit("d1", "Alpha", 2.0, "The first letter.", 1)]))
        1. [d1] Alpha
           The first letter.
    """
    if not hits:
        return f"No results for {query!r}. Try other words."
    return "\n".join(f"{h.rank}. [{h.doc_id}] {h.title}\n   {h.snippet}" for h in hits)


def window(text: str, offset: int, length: int) -> tuple[str, int, int]:
    """A passage of ``text`` starting near ``offset``: ``(passage, start, end)``, cut at word bounds.

    Example:
        >>> window("alpha beta gamma delta", 3, 10)
        ('beta gamma', 6, 16)
    """
    if offset < 0 or length < 1:
        raise QueryError("offset must be >= 0 and length >= 1")
    if offset >= len(text):
        if offset == 0:
            return "", 0, 0
        raise QueryError(f"offset {offset} is past the end of the document ({len(text)} characters)")
    start = offset
    if start > 0 and not text[start - 1].isspace():  # move to the next word start
        nxt = re.search(r"\s", text[start:])
        start = start + nxt.end() if nxt else start
    end = min(len(text), start + length)
    if end < len(text) and not text[end].isspace():
        cut = text.rfind(" ", start, end)
        end = cut if cut > start else end
    return text[start:end], start, end
