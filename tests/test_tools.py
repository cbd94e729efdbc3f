"""Tools: schema from hints and docstrings, argument validation, async, timeouts, failures, truncation."""

from __future__ import annotations

import asyncio
import threading
from typing import Literal, Optional

import pytest

from toolgym.envs.tools import Tool, ToolResult, as_tool, parse_google_docstring, tool, type_schema


def run(coro):
    return asyncio.run(coro)


def search(query: str, k: int = 3, lang: Literal["en", "de"] = "en", since: int | None = None,
           tags: list[str] | None = None, ids: list[int] = (), weight: float = 1.0, exact: bool = False,
           client: object = None, *rest: int, **extra: str) -> dict:
    """Search the corpus.

    Longer description that the summary does not keep.

    Args:
        query: What to look for.
        k (int): How many hits,
            at most 10.
        lang: Language.
        since: Year.
        tags: Tags.
        ids: Document ids.
        weight: Score weight.
        exact: Exact match only.
        client: The search client.

    Returns:
        The hits.
    """
    return {"query": query, "k": k, "lang": lang, "since": since, "tags": tags, "ids": list(ids), "weight": weight,
            "exact": exact, "client": client}


SEARCH = Tool.from_function(search, hidden=("client",), timeout=None)


# ---------------------------------------------------------------- schema


def test_schema_from_hints_and_docstring():
    fn = SEARCH.schema["function"]
    assert fn["name"] == "search"
    assert fn["description"] == "Search the corpus. Longer description that the summary does not keep."
    params = fn["parameters"]
    assert params["required"] == ["query"]
    assert params["additionalProperties"] is False
    props = params["properties"]
    assert list(props) == ["query", "k", "lang", "since", "tags", "ids", "weight", "exact"]  # hidden, *rest, **extra out
    assert props["query"] == {"type": "string", "description": "What to look for."}
    assert props["k"] == {"type": "integer", "description": "How many hits, at most 10.", "default": 3}
    assert props["lang"] == {"enum": ["en", "de"], "description": "Language.", "default": "en"}
    assert props["since"] == {"type": ["integer", "null"], "description": "Year.", "default": None}
    assert props["tags"]["anyOf"] == [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]
    assert props["ids"]["type"] == "array" and props["ids"]["items"] == {"type": "integer"}
    assert (props["weight"]["type"], props["exact"]["type"]) == ("number", "boolean")


@pytest.mark.parametrize(("hint", "schema"), [
    (int, {"type": "integer"}), (str, {"type": "string"}), (bool, {"type": "boolean"}), (float, {"type": "number"}),
    (dict, {"type": "object"}), (dict[str, int], {"type": "object"}), (list, {"type": "array"}),
    (list[list[int]], {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}),
    (Optional[str], {"type": ["string", "null"]}),  # noqa: UP045
    (int | float, {"type": ["integer", "number"]}),
    (Literal[1, 2], {"enum": [1, 2]}), (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
])
def test_type_schema(hint, schema):
    assert type_schema(hint) == schema


def test_docstring_parsing_edge_cases():
    assert parse_google_docstring(None) == ("", {})
    assert parse_google_docstring("One line.") == ("One line.", {})
    summary, args = parse_google_docstring("Do.\n\n    Args:\n        *items: Things.\n        **kw: Options.\n")
    assert (summary, args) == ("Do.", {"items": "Things.", "kw": "Options."})


def test_decorator_forms_and_name_override():
    @tool
    def plain(x: int) -> int:
        return x

    @tool(name="renamed", timeout=1.5, max_result_chars=10)
    async def coro(x: int) -> int:
        return x

    assert isinstance(plain, Tool) and plain.name == "plain" and plain.description == ""
    assert (coro.name, coro.timeout, coro.max_result_chars, coro.is_async) == ("renamed", 1.5, 10, True)
    copied = as_tool(plain)  # a copy: an env that changes its tool's settings changes only its own
    assert copied == plain and copied is not plain
    assert as_tool(search).name == "search"


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(("arguments", "message"), [
    ({}, "missing required argument(s): query"),
    ({"k": 1}, "missing required argument(s): query"),
    ({"query": "q", "nope": 1}, "unknown argument(s): nope; expected query, k, lang, since, tags, ids, weight, exact"),
    ({"query": "q", "client": "mine"}, "unknown argument(s): client; expected query, k, lang, since, tags, ids, weight, exact"),  # hidden args cannot be set by the model
    ({"query": 3}, "argument 'query': expected string, got int"),
    ({"query": "q", "k": "3"}, "argument 'k': expected integer, got str"),
    ({"query": "q", "k": True}, "argument 'k': expected integer, got bool"),
    ({"query": "q", "k": 2.5}, "argument 'k': expected integer, got float"),
    ({"query": "q", "weight": False}, "argument 'weight': expected number, got bool"),
    ({"query": "q", "lang": "fr"}, "argument 'lang': must be one of ['en', 'de']"),
    ({"query": "q", "since": "2020"}, "argument 'since': expected integer or null, got str"),
    ({"query": "q", "ids": [1, "2"]}, "argument 'ids': item 1: expected integer, got str"),
    ({"query": "q", "ids": 1}, "argument 'ids': expected array, got int"),
    ([1, 2], "arguments must be a JSON object, got list"),
    (None, "arguments must be a JSON object, got NoneType"),
    ("query=q", "arguments must be a JSON object, got str"),
])
def test_bad_arguments_are_reported_not_run(arguments, message):
    assert SEARCH.validate(arguments) == message
    result = run(SEARCH.call(arguments, {"client": "c"}))
    assert result == ToolResult(content=f"Error: {message}", ok=False, error="bad_arguments",
                                elapsed_s=result.elapsed_s)


def test_valid_arguments_run_with_hidden_args_and_coercion():
    result = run(SEARCH.call({"query": "q", "weight": 2, "since": None, "ids": [1]}, {"client": "C", "other": 1}))
    assert result.ok and result.error is None
    assert result.content == ('{"query": "q", "k": 3, "lang": "en", "since": null, "tags": null, "ids": [1], '
                              '"weight": 2.0, "exact": false, "client": "C"}')  # int 2 -> float 2.0 for a float


def test_missing_hidden_arg_is_an_exception_result():
    result = run(SEARCH.call({"query": "q"}, {}))
    assert (result.ok, result.error) == (False, "exception")
    assert "hidden argument 'client' is not provided" in result.content


def test_optional_composite_types_are_validated():
    assert SEARCH.validate({"query": "q", "tags": "not-a-list"}) is not None
    assert SEARCH.validate({"query": "q", "tags": [1]}) is not None

    def pick(choice: Literal["a", "b"] | None = None) -> str:
        return str(choice)

    assert Tool.from_function(pick).validate({"choice": "z"}) is not None


def test_heterogeneous_tuple_accepts_its_own_shape():
    def pair(p: tuple[int, str]) -> str:
        return str(p)

    assert Tool.from_function(pair).validate({"p": [1, "a"]}) is None


# ---------------------------------------------------------------- running: sync, async, failures


def test_sync_and_async_tools_return_text():
    @tool(timeout=5)
    def add(a: int, b: int) -> int:
        return a + b

    @tool(timeout=5)
    async def shout(text: str) -> str:
        await asyncio.sleep(0)
        return text.upper()

    @tool(timeout=None)
    async def nothing() -> None:
        return None

    assert run(add.call({"a": 2, "b": 3}, {})).content == "5"
    assert run(shout.call({"text": "héllo ✓"}, {})).content == "HÉLLO ✓"
    assert run(nothing.call({}, {})) .content == ""
    assert add.call_sync({"a": 1, "b": 1}, {}).content == "2"


def test_parallel_async_calls_run_concurrently():
    started = 0
    both = asyncio.Event()

    @tool(timeout=30)
    async def rendezvous() -> str:
        nonlocal started
        started += 1
        if started == 2:
            both.set()
        await both.wait()  # only returns if the other call runs at the same time
        return "met"

    async def main():
        return await asyncio.gather(rendezvous.call({}, {}), rendezvous.call({}, {}))

    assert [r.content for r in run(main())] == ["met", "met"]


def test_sync_tool_timeout_becomes_a_result():
    release = threading.Event()

    @tool(timeout=0.05)
    def stuck() -> str:
        release.wait(30)
        return "late"

    async def main() -> ToolResult:
        try:
            return await stuck.call({}, {})
        finally:
            # The worker thread outlives the timeout; asyncio.run waits for it at shutdown.
            release.set()

    result = run(main())
    assert (result.ok, result.error) == (False, "timeout")
    assert result.content == "Error: tool 'stuck' timed out after 0.05s"


def test_async_tool_timeout_cancels_it():
    cancelled = []

    @tool(timeout=0.05)
    async def forever() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "never"

    result = run(forever.call({}, {}))
    assert (result.ok, result.error) == (False, "timeout")
    assert cancelled == [True]


@pytest.mark.parametrize("timeout", [None, 5])
def test_exceptions_become_results(timeout):
    @tool(timeout=timeout)
    def boom(x: int) -> int:
        raise ValueError(f"bad x={x}")

    @tool(timeout=timeout)
    async def aboom() -> int:
        raise KeyError("missing")

    result = run(boom.call({"x": 1}, {}))
    assert result == ToolResult("Error: ValueError: bad x=1", ok=False, error="exception", elapsed_s=result.elapsed_s)
    result = run(aboom.call({}, {}))
    assert (result.error, result.content) == ("exception", "Error: KeyError: 'missing'")
    assert boom.call_sync({"x": 2}, {}).error == "exception"


def test_result_that_cannot_be_printed_is_an_exception_result():
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no str")

    @tool(timeout=None)
    def weird() -> object:
        return Unprintable()

    assert run(weird.call({}, {})).error == "exception"


@pytest.mark.parametrize("timeout", [None, 5])
def test_huge_results_are_truncated(timeout):
    @tool(timeout=timeout, max_result_chars=1000)
    def flood(n: int) -> str:
        return "x" * n

    @tool(timeout=timeout, max_result_chars=50)
    def rows() -> list:
        return [{"i": i, "s": "é"} for i in range(1000)]

    result = run(flood.call({"n": 1_000_000}, {}))
    assert result.ok
    assert result.content == "x" * 1000 + "\n[output truncated at 1000 characters]"
    assert run(flood.call({"n": 1000}, {})).content == "x" * 1000  # at the limit: untouched
    text = run(rows.call({}, {})).content
    assert text.startswith('[{"i": 0, "s": "é"}') and text.endswith("[output truncated at 50 characters]")
    assert len(text) == 50 + len("\n[output truncated at 50 characters]")


def test_default_result_limit_applies():
    @tool
    def flood() -> str:
        return "y" * 100_000

    assert len(run(flood.call({}, {})).content) == flood.max_result_chars + len(
        f"\n[output truncated at {flood.max_result_chars} characters]")
