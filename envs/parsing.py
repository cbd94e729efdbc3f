"""Tool-call parsing: Hermes/Qwen tags, OpenAI structured calls and Llama-3 JSON.

The forms the supported families emit:

* Hermes / Qwen2.5 / Qwen3: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one
  block per call; a block may also hold a JSON *list* of calls, as SmolLM2 writes them (its
  function-calling SFT data, APIGen, puts every call of a turn in one ``<tool_call>[...]``);
* Llama 3.x: bare JSON ``{"name": ..., "parameters": {...}}`` (several separated by ``;`` or
  newlines, or as one JSON list), optionally after ``<|python_tag|>``;
* OpenAI-style structured ``tool_calls`` on a message dict.

Parsers take whatever the model produced and never raise: a malformed call becomes a
:class:`ToolCall` with ``error`` set, which the environment turns into an error tool message
the model sees (and counts in ``info``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_CALL_CHARS = 65_536  # a single call's payload; beyond this it is refused, not parsed
MAX_CALLS_PER_TURN = 16

_HERMES = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)
_CLOSE_AFTER_JSON = re.compile(r"\s*</tool_call>")
_LLAMA_TAG = "<|python_tag|>"


@dataclass
class ToolCall:
    """One call the model asked for; ``error`` is set when it could not be understood."""

    name: str
    arguments: Any = None
    id: str = ""
    error: str | None = None


@dataclass
class ParsedTurn:
    """An assistant turn split into its text and its tool calls."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)

    @property
    def errors(self) -> list[ToolCall]:
        return [c for c in self.calls if c.error]


def _load_calls(payload: str, first: int) -> list[ToolCall]:
    """The calls in one ``<tool_call>`` payload: a JSON object, or a JSON list of them."""
    call_id = f"call_{first}"
    if len(payload) > MAX_CALL_CHARS:
        return [ToolCall(name="", id=call_id,
                         error=f"tool call too large ({len(payload)} characters; limit {MAX_CALL_CHARS})")]
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        return [ToolCall(name="", id=call_id, error=f"tool call is not valid JSON: {exc}")]
    if isinstance(obj, list):  # several calls in one block; [] is APIGen's "no call needed"
        return [_from_object(o, f"call_{first + k}") for k, o in enumerate(obj[: MAX_CALLS_PER_TURN + 1])]
    return [_from_object(obj, call_id)]


def _from_object(obj: Any, call_id: str, args_key: str = "arguments") -> ToolCall:
    if not isinstance(obj, dict):
        return ToolCall(name="", id=call_id, error='tool call must be a JSON object {"name": ..., "arguments": {...}}')
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall(name="", id=call_id, error='tool call has no "name" string')
    args = obj.get(args_key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(args, str):  # some models double-encode the arguments
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError):
            return ToolCall(name=name, id=call_id, error="tool call arguments are not valid JSON")
    if not isinstance(args, dict):
        return ToolCall(name=name, id=call_id, error="tool call arguments must be a JSON object")
    return ToolCall(name=name, arguments=args, id=str(obj.get("id") or call_id))


def _hermes_blocks(text: str) -> list[tuple[int, int, str | None]]:
    """``(start, end, payload)`` of each ``<tool_call>`` block; payload ``None`` when unclosed.

    The block normally ends at the first ``</tool_call>``; when that cut is not JSON, a JSON
    object that itself contains ``</tool_call>`` in a string (and is followed by the closing
    tag) is taken whole.
    """
    blocks: list[tuple[int, int, str | None]] = []
    decoder = json.JSONDecoder()
    pos = 0
    while (m := _HERMES.search(text, pos)) is not None:
        if not m.group(2):
            blocks.append((m.start(), m.end(), None))
            break
        payload, end = m.group(1), m.end()
        try:
            json.loads(payload)
        except (ValueError, RecursionError):
            body = m.start(1) + len(payload) - len(payload.lstrip())
            try:
                _, json_end = decoder.raw_decode(text, body)
                close = _CLOSE_AFTER_JSON.match(text, json_end)
                if close and json_end - body <= MAX_CALL_CHARS:
                    payload, end = text[body:json_end], close.end()
            except (ValueError, RecursionError):
                pass
        blocks.append((m.start(), end, payload))
        pos = end
    return blocks


def _add_capped(calls: list[ToolCall], found: list[ToolCall]) -> bool:
    """Append ``found`` up to :data:`MAX_CALLS_PER_TURN`; past it, one error call and ``False``."""
    for call in found:
        if len(calls) >= MAX_CALLS_PER_TURN:
            calls.append(ToolCall(name="", id=f"call_{len(calls)}",
                                  error=f"more than {MAX_CALLS_PER_TURN} tool calls in one turn"))
            return False
        calls.append(call)
    return True


def parse_hermes(text: str) -> ParsedTurn:
    """Parse ``<tool_call>{json}</tool_call>`` blocks (Hermes, Qwen 2.5/3); several = parallel calls.

    A block holding a JSON list (SmolLM2's form) is several calls.

    Example:
        >>> t = parse_hermes('ok <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>')
        >>> t.content, t.calls[0].name, t.calls[0].arguments
        ('ok', 'add', {'a': 1})
        >>> [c.name for c in parse_hermes('<tool_call>[{"name": "a", "arguments": {}}, {"name": "b"}]</tool_call>').calls]
        ['a', 'b']
    """
    blocks = _hermes_blocks(text)
    calls: list[ToolCall] = []
    for _, _, payload in blocks:
        if payload is None:
            found = [ToolCall(name="", id=f"call_{len(calls)}", error="unclosed <tool_call> tag")]
        else:
            found = _load_calls(payload.strip(), len(calls))
        if not _add_capped(calls, found):
            break
    kept, pos = [], 0
    for start, end, _ in blocks:
        kept.append(text[pos:start])
        pos = end
    content = ("".join(kept) + text[pos:]).strip()
    return ParsedTurn(content=content, calls=calls)


def parse_llama3(text: str) -> ParsedTurn:
    """Parse Llama-3.x JSON tool calls: ``{"name": ..., "parameters": {...}}`` (``;``-separated or a list).

    Text before ``<|python_tag|>`` is the turn's content. Untagged text is a call only when it
    starts with a call-shaped object (or a list of them); otherwise it stays text. After the tag,
    anything that is not JSON (Llama's built-in ``brave_search.call(...)``, raw code) is an error
    call, so the model learns the JSON form.

    Example:
        >>> parse_llama3('{"name": "add", "parameters": {"a": 1}}').calls[0].arguments
        {'a': 1}
        >>> t = parse_llama3('Let me add. <|python_tag|>[{"name": "add", "parameters": {"a": 1}}]')
        >>> t.content, t.calls[0].name
        ('Let me add.', 'add')
    """
    tag = text.find(_LLAMA_TAG)
    # text that opens as JSON is untagged: a tag further on sits inside or after that JSON
    tagged = tag >= 0 and not text.lstrip().startswith(("{", "["))
    content = text[:tag].strip() if tagged else ""
    body = (text[tag + len(_LLAMA_TAG):] if tagged else text).strip()
    if not body.startswith(("{", "[")):
        if not tagged:
            return ParsedTurn(content=text.strip())
        return ParsedTurn(content=content, calls=[ToolCall(name="", id="call_0", error=(
            f'after {_LLAMA_TAG} a tool call must be JSON {{"name": ..., "parameters": {{...}}}}'))])
    if len(body) > MAX_CALL_CHARS:
        return ParsedTurn(content=content, calls=[ToolCall(name="", id="call_0", error="tool call too large")])
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    pos = 0
    while pos < len(body):
        try:
            obj, end = decoder.raw_decode(body, pos)
        except (ValueError, RecursionError) as exc:
            if not calls and not tagged:
                return ParsedTurn(content=text.strip())  # plain text that happens to start with "{"
            calls.append(ToolCall(name="", id=f"call_{len(calls)}", error=f"tool call is not valid JSON: {exc}"))
            break
        objs = obj if isinstance(obj, list) else [obj]
        if not calls and not tagged and not (objs and all(map(_call_shaped, objs))):
            return ParsedTurn(content=text.strip())  # e.g. a JSON answer, not a call
        found = [_from_object(o, f"call_{len(calls) + k}", "parameters")
                 for k, o in enumerate(objs[: MAX_CALLS_PER_TURN + 1])]
        if not _add_capped(calls, found):
            break
        pos = end
        while pos < len(body) and body[pos] in " \t\r\n;":
            pos += 1
    return ParsedTurn(content=content, calls=calls)


def _call_shaped(obj: Any) -> bool:
    return isinstance(obj, dict) and "name" in obj and ("parameters" in obj or "arguments" in obj)


def parse_openai(message: dict[str, Any]) -> ParsedTurn:
    """Parse an OpenAI-style assistant message with structured ``tool_calls``.

    Example:
        >>> m = {"role": "assistant", "content": None, "tool_calls": [
        ...     {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}]}
        >>> parse_openai(m).calls[0].arguments
        {'a': 2}
    """
    content = message.get("content") or ""
    if not isinstance(content, str):
        content = str(content)
    raw_calls = message.get("tool_calls") or []
    if not isinstance(raw_calls, list):
        return ParsedTurn(content=content, calls=[ToolCall(name="", id="call_0", error="tool_calls must be a list")])
    calls: list[ToolCall] = []
    for i, raw in enumerate(raw_calls[: MAX_CALLS_PER_TURN + 1]):
        if i >= MAX_CALLS_PER_TURN:
            calls.append(ToolCall(name="", id=f"call_{i}", error=f"more than {MAX_CALLS_PER_TURN} tool calls in one turn"))
            break
        fn = raw.get("function") if isinstance(raw, dict) else None
        call_id = str(raw.get("id") or f"call_{i}") if isinstance(raw, dict) else f"call_{i}"
        if not isinstance(fn, dict):
            calls.append(ToolCall(name="", id=call_id, error="tool call has no 'function' object"))
            continue
        args = fn.get("arguments", {})
        if isinstance(args, str) and len(args) > MAX_CALL_CHARS:
            calls.append(ToolCall(name=str(fn.get("name", "")), id=call_id, error="tool call too large"))
            continue
        call = _from_object({"name": fn.get("name"), "arguments": args}, call_id)
        call.id = call_id
        calls.append(call)
    # Models served behind a non-parsing endpoint may still emit Hermes tags in the text.
    if not calls and "<tool_call>" in content:
        return parse_hermes(content)
    return ParsedTurn(content=content.strip(), calls=calls)


PARSERS = {"hermes": parse_hermes, "llama3": parse_llama3}


def parse_action(action: Any, fmt: str = "auto") -> ParsedTurn:
    """Parse an assistant action (text or message dict) in the given format; never raises.

    ``fmt="auto"`` reads structured ``tool_calls`` from a dict, Hermes tags from text, and
    Llama-3 JSON when the text is a call object or list, or holds ``<|python_tag|>``.

    Example:
        >>> len(parse_action('<tool_call>{"name": "f", "arguments": {}}</tool_call>').calls)
        1
        >>> parse_action("The answer is 4.").calls
        []
    """
    try:
        if isinstance(action, dict):
            return parse_openai(action)
        if not isinstance(action, str):
            return ParsedTurn(content="", calls=[ToolCall(name="", id="call_0",
                                                          error=f"action must be text or a message, got {type(action).__name__}")])
        if fmt == "auto":
            turn = parse_hermes(action)
            if turn.calls:
                return turn
            if action.lstrip().startswith(("{", "[")) or _LLAMA_TAG in action:
                return parse_llama3(action)
            return turn
        return PARSERS[fmt](action)
    except Exception as exc:  # belt and braces: parsing must never end an episode
        return ParsedTurn(content="", calls=[ToolCall(name="", id="call_0", error=f"unparseable turn: {exc}")])
