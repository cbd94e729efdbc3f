"""Tools: plain Python functions (sync or async) the model can call.

The JSON schema comes from the type hints and the Google-style docstring. Parameters listed in
``hidden`` are not shown to the model: the environment fills them from the episode (its state,
its sandbox, its search client). A tool never raises out of a call: failures, bad arguments and
timeouts come back as a :class:`ToolResult` whose text the model sees.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import re
import sys
import time
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean",
                               list: "array", tuple: "array", dict: "object"}
_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}


def type_schema(annotation: Any) -> dict[str, Any]:
    """JSON schema of a Python type hint.

    Example:
        >>> type_schema(list[int])
        {'type': 'array', 'items': {'type': 'integer'}}
        >>> type_schema(int | None)
        {'type': ['integer', 'null']}
    """
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        parts = [type_schema(a) for a in args]
        if all(set(p) == {"type"} and isinstance(p["type"], str) for p in parts):
            return {"type": [p["type"] for p in parts]}
        return {"anyOf": parts}
    if annotation is type(None):
        return {"type": "null"}
    if origin is tuple and args and args[-1] is not Ellipsis:  # fixed shape: tuple[int, str]
        return {"type": "array", "prefixItems": [type_schema(a) for a in args],
                "minItems": len(args), "maxItems": len(args)}
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple):
        schema: dict[str, Any] = {"type": "array"}
        if args and args[0] is not Ellipsis:
            schema["items"] = type_schema(args[0])
        return schema
    if origin is dict or annotation is dict:
        return {"type": "object"}
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    return {"type": "string"}


def parse_google_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into a summary and per-argument descriptions.

    Example:
        >>> parse_google_docstring('''Add.\\n\\n    Args:\\n        a: First.\\n        b: Second.\\n    ''')
        ('Add.', {'a': 'First.', 'b': 'Second.'})
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    args: dict[str, str] = {}
    section, current = None, None
    for line in lines:
        stripped = line.strip()
        if re.fullmatch(r"[A-Z][A-Za-z ]*:", stripped):
            section, current = stripped[:-1].lower(), None
            continue
        if section is None:
            summary.append(stripped)
        elif section in ("args", "arguments", "parameters"):
            m = re.match(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", stripped)
            if m and not line.startswith(" " * 8):
                current = m.group(1).lstrip("*")
                args[current] = m.group(2)
            elif current and stripped:
                args[current] = f"{args[current]} {stripped}".strip()
    return " ".join(s for s in summary if s).strip(), args


@dataclass(frozen=True)
class ToolResult:
    """What one tool call produced: the text the model sees, plus accounting."""

    content: str
    ok: bool = True
    error: str | None = None  # "bad_arguments" | "timeout" | "exception" | "unknown_tool" | "parse"
    elapsed_s: float = 0.0


@dataclass
class Tool:
    """A callable tool with its JSON schema.

    Example:
        >>> def add(a: int, b: int) -> int:
        ...     '''Add two integers.
        ...
        ...     Args:
        ...         a: First addend.
        ...         b: Second addend.
        ...     '''
        ...     return a + b
        >>> t = Tool.from_function(add, timeout=None)
        >>> t.schema["function"]["parameters"]["required"]
        ['a', 'b']
        >>> t.call_sync({"a": 2, "b": 3}, {}).content
        '5'
    """

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]
    hidden: tuple[str, ...] = ()
    timeout: float | None = 30.0
    max_result_chars: int = 16_000
    is_async: bool = False
    _checks: dict[str, tuple[Any, bool]] = field(default_factory=dict, repr=False)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # ``@tool`` rebinds the function's module-level name to the Tool, so pickle cannot find the
        # raw function by name; refer to the module's Tool instead (keeping this copy's settings).
        module, qualname = getattr(self.fn, "__module__", None), getattr(self.fn, "__qualname__", "")
        shared = getattr(sys.modules.get(module or ""), qualname, None) if "." not in qualname else None
        if isinstance(shared, Tool) and shared.fn is self.fn:
            settings = {"name": self.name, "timeout": self.timeout, "max_result_chars": self.max_result_chars}
            return (_module_tool, (module, qualname, settings))
        return super().__reduce_ex__(protocol)

    @classmethod
    def from_function(cls, fn: Callable[..., Any], *, name: str | None = None, hidden: Iterable[str] = (),
                      timeout: float | None = 30.0, max_result_chars: int = 16_000) -> Tool:
        hidden = tuple(hidden)
        summary, arg_docs = parse_google_docstring(fn.__doc__)
        hints = typing.get_type_hints(fn)
        props: dict[str, Any] = {}
        required: list[str] = []
        for pname, param in inspect.signature(fn).parameters.items():
            if pname in hidden or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            schema = type_schema(hints.get(pname, param.annotation))
            if pname in arg_docs:
                schema["description"] = arg_docs[pname]
            if param.default is param.empty:
                required.append(pname)
            else:
                schema["default"] = param.default
            props[pname] = schema
        parameters = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
        return cls(name=name or fn.__name__, description=summary, parameters=parameters, fn=fn, hidden=hidden,
                   timeout=timeout, max_result_chars=max_result_chars,
                   is_async=inspect.iscoroutinefunction(fn))

    @property
    def schema(self) -> dict[str, Any]:
        """OpenAI-style function schema, as chat templates and servers expect it."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def validate(self, arguments: Any) -> str | None:
        """Return a message saying what is wrong with ``arguments``, or ``None`` if they fit."""
        if not isinstance(arguments, dict):
            return f"arguments must be a JSON object, got {type(arguments).__name__}"
        props, required = self.parameters["properties"], self.parameters["required"]
        missing = [r for r in required if r not in arguments]
        if missing:
            return f"missing required argument(s): {', '.join(missing)}"
        unknown = [k for k in arguments if k not in props]
        if unknown:
            return f"unknown argument(s): {', '.join(map(str, unknown))}; expected {', '.join(props) or 'none'}"
        for key, value in arguments.items():
            problem = _type_problem(props[key], value)
            if problem:
                return f"argument '{key}': {problem}"
        return None

    def _prepare(self, arguments: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(arguments)
        for h in self.hidden:
            if h not in context:
                raise KeyError(f"hidden argument '{h}' is not provided by the environment")
            kwargs[h] = context[h]
        # JSON has one number type: give float parameters floats even when the model wrote 3.
        for key, value in arguments.items():
            if self.parameters["properties"][key].get("type") == "number" and isinstance(value, int):
                kwargs[key] = float(value)
        return kwargs

    def _finish(self, value: Any, start: float) -> ToolResult:
        text = value if isinstance(value, str) else _to_text(value)
        if len(text) > self.max_result_chars:
            text = text[: self.max_result_chars] + f"\n[output truncated at {self.max_result_chars} characters]"
        return ToolResult(content=text, elapsed_s=time.perf_counter() - start)

    def call_sync(self, arguments: Any, context: dict[str, Any]) -> ToolResult:
        """Run inline in this thread (no timeout): for fast, trusted sync tools."""
        start = time.perf_counter()
        problem = self.validate(arguments)
        if problem:
            return _error(f"Error: {problem}", "bad_arguments", start)
        try:
            return self._finish(self.fn(**self._prepare(arguments, context)), start)
        except Exception as exc:  # the model sees its tool's failure; the episode goes on
            return _error(f"Error: {type(exc).__name__}: {exc}", "exception", start)

    async def call(self, arguments: Any, context: dict[str, Any]) -> ToolResult:
        """Run with the tool's timeout. Sync tools with a timeout run in a worker thread."""
        if not self.is_async and self.timeout is None:
            return self.call_sync(arguments, context)
        start = time.perf_counter()
        problem = self.validate(arguments)
        if problem:
            return _error(f"Error: {problem}", "bad_arguments", start)
        try:
            kwargs = self._prepare(arguments, context)
            work = self.fn(**kwargs) if self.is_async else asyncio.to_thread(self.fn, **kwargs)
            value = await asyncio.wait_for(work, self.timeout)
            return self._finish(value, start)
        except TimeoutError:
            return _error(f"Error: tool '{self.name}' timed out after {self.timeout:g}s", "timeout", start)
        except Exception as exc:
            return _error(f"Error: {type(exc).__name__}: {exc}", "exception", start)


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, hidden: Iterable[str] = (),
         timeout: float | None = 30.0, max_result_chars: int = 16_000) -> Any:
    """Decorator form of :meth:`Tool.from_function`.

    Example:
        >>> @tool(timeout=None)
        ... def echo(text: str) -> str:
        ...     '''Repeat the text.'''
        ...     return text
        >>> echo.name, echo.parameters["required"]
        ('echo', ['text'])
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name=name, hidden=hidden, timeout=timeout, max_result_chars=max_result_chars)

    return wrap(fn) if fn is not None else wrap


def as_tool(obj: Tool | Callable[..., Any]) -> Tool:
    """Accept a :class:`Tool` or a plain function; a ``Tool`` is copied, so an env may change its settings."""
    return dataclasses.replace(obj) if isinstance(obj, Tool) else Tool.from_function(obj)


def _module_tool(module: str, qualname: str, settings: dict[str, Any]) -> Tool:
    """Unpickle a ``@tool`` defined at module level: the module's Tool with the pickled copy's settings."""
    return dataclasses.replace(getattr(importlib.import_module(module), qualname), **settings)


def _error(text: str, kind: str, start: float) -> ToolResult:
    return ToolResult(content=text, ok=False, error=kind, elapsed_s=time.perf_counter() - start)


def _to_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        import json

        try:
            return json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def _type_problem(schema: dict[str, Any], value: Any) -> str | None:
    if "anyOf" in schema:
        problems = [_type_problem(option, value) for option in schema["anyOf"]]
        return None if None in problems else " or ".join(p for p in problems if p)
    if "enum" in schema and value not in schema["enum"]:
        return f"must be one of {schema['enum']}"
    kind = schema.get("type")
    if kind is None:
        return None
    kinds = kind if isinstance(kind, list) else [kind]
    if not any(_CHECKS[k](value) for k in kinds if k in _CHECKS):
        return f"expected {' or '.join(kinds)}, got {type(value).__name__}"
    prefix = schema.get("prefixItems")
    if prefix and isinstance(value, list):
        if len(value) != len(prefix):
            return f"expected {len(prefix)} items, got {len(value)}"
        for i, (item_schema, item) in enumerate(zip(prefix, value, strict=True)):
            problem = _type_problem(item_schema, item)
            if problem:
                return f"item {i}: {problem}"
    items = schema.get("items")
    if items and isinstance(value, list):
        for i, item in enumerate(value):
            problem = _type_problem(items, item)
            if problem:
                return f"item {i}: {problem}"
    return None
