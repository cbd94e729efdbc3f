"""Tool schemas for chat templates that drop ``tools=``: the model family's tool prompt, injected.

Hugging Face chat templates receive tool schemas as ``apply_chat_template(..., tools=...)``, but
many silently ignore them (SmolLM2-Instruct's, Llama 3.0's, most plain ChatML ones), so the model
would never see what it may call. :func:`probe_template` renders a probe conversation with and
without a dummy tool; when the tool's name does not appear, the template drops tools, and
:class:`ToolPrompt` rewrites every conversation before the template renders it:

* **tools** go into the system message, in the wording the family was tuned on (:data:`STYLES`),
  after the env's system prompt. Without one, a system message is added that starts with the
  template's own default system prompt (SmolLM2: "You are a helpful AI assistant named SmolLM,
  trained by Hugging Face", which its template emits only when the conversation has no system
  message), so the model reads what it was tuned on, plus the tools;
* **tool results** (role ``tool``) are rewritten the way the family reads them. ChatML families
  get ``<|im_start|>user\\n<tool_response>\\n...\\n</tool_response><|im_end|>`` (consecutive
  results share one user turn), as Qwen2.5 and toolgym's tiny template render them and as
  SmolLM2 is served with tools (Ollama's SmolLM2 template). A plain ChatML template would print
  role ``tool`` literally as ``<|im_start|>tool``, a role these models never saw in tuning;
* **structured** assistant ``tool_calls`` become call text (``<tool_call>...</tool_call>``), as a
  tool-aware template would print them; a template that drops tools drops those too.

Token exactness: the rewrite is a pure function of the message list and is applied to every
render (the first prompt and each re-render for env-reply deltas), and each new message only
adds text at the end, so a later render extends an earlier one exactly as the template's own
rendering would. Templates that render ``tools=`` are left alone.

Styles (pick one with ``ChatFormat(tool_style=...)``; the default follows the template's markup):

* ``hermes``: Hermes / Qwen2.5 wording (the tiny template's), one JSON schema per line inside
  ``<tools></tools>``, calls as ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. The
  default for ChatML templates (SmolLM2, Qwen, Hermes, OLMo...);
* ``apigen``: SmolLM2's own function-calling SFT wording (APIGen data in smol-talk): the schemas
  as one JSON list, calls as a JSON list inside one ``<tool_call>``. Closest to SmolLM2's tuning,
  but it tells the model to write nothing but calls, which suits single-step tasks only;
* ``llama3``: Llama 3.1's JSON tool-call wording (``{"name": ..., "parameters": {...}}``), tool
  results as role ``ipython``; the default for ``<|start_header_id|>`` templates.

Limitation: a template that refuses system messages (Gemma 2, some Mistral ones) cannot take the
injected prompt; pass a tool-aware ``chat_template=`` instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from toolgym.rollouts.tiny import _TOOLS_POSTAMBLE, _TOOLS_PREAMBLE

log = logging.getLogger("toolgym.tokens")

TOOL_PROMPTS = ("auto", "template", "system")
"""``auto``: the template's own tool rendering when it has one, else ``system``; ``template``:
always the template (tools may be dropped); ``system``: always inject (the template gets no tools)."""

Render = Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], str]

_PROBE_NAME = "toolgym_probe_tool"
_PROBE_TOOL = {"type": "function", "function": {
    "name": _PROBE_NAME, "description": "Probe.",
    "parameters": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}}}
_PROBE_USER = [{"role": "user", "content": "toolgym probe question"}]
_PROBE_SYSTEM = "toolgym probe system"


@dataclass(frozen=True)
class ToolStyle:
    """How one model family was shown its tools, wrote its calls and read their results."""

    name: str
    preamble: str  # text before the schemas
    postamble: str  # text after them
    schemas_as_list: bool = False  # one JSON list (APIGen) instead of one schema per line
    result_role: str = "user"
    result_wrap: tuple[str, str] = ("<tool_response>\n", "\n</tool_response>")
    merge_results: bool = True  # consecutive tool results share one turn, joined by a newline
    call_wrap: tuple[str, str] = ("<tool_call>\n", "\n</tool_call>")
    args_key: str = "arguments"

    def tools_text(self, tools: list[dict[str, Any]]) -> str:
        """The tool block for the system message."""
        if self.schemas_as_list:
            return self.preamble + json.dumps(tools, ensure_ascii=False) + self.postamble
        return self.preamble + "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools) + self.postamble

    def call_text(self, call: Any) -> str:
        """One structured call (OpenAI ``{"function": {...}}`` or flat) as the family writes it."""
        fn = call.get("function", call) if isinstance(call, dict) else {}
        fn = fn if isinstance(fn, dict) else {}
        args = fn.get("arguments", {})
        args_json = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        body = '{"name": ' + json.dumps(fn.get("name", ""), ensure_ascii=False) + f', "{self.args_key}": {args_json}}}'
        return self.call_wrap[0] + body + self.call_wrap[1]


_APIGEN_PREAMBLE = (
    "You are an expert in composing functions. You are given a question and a set of possible functions.\n"
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\n"
    "If none of the functions can be used, point it out and refuse to answer.\n"
    "If the given question lacks the parameters required by the function, also point it out.\n"
    "You have access to the following tools:\n<tools>")
_APIGEN_POSTAMBLE = (
    "</tools>\nThe output MUST strictly adhere to the following format, and NO other text MUST be included.\n"
    "The example format is as follows. Please make sure the parameter type is correct. If no function call "
    "is needed, please make the tool calls an empty list '[]'.\n<tool_call>[\n{\"name\": \"func_name1\", "
    "\"arguments\": {\"argument1\": \"value1\", \"argument2\": \"value2\"}},\n(more tool calls as required)\n"
    "]</tool_call>")
_LLAMA3_PREAMBLE = (
    "Given the following functions, please respond with a JSON for a function call with its proper arguments "
    "that best answers the given prompt.\n\nRespond in the format {\"name\": function name, \"parameters\": "
    "dictionary of argument name and its value}. Do not use variables.\n")

STYLES: dict[str, ToolStyle] = {
    "hermes": ToolStyle("hermes", _TOOLS_PREAMBLE, _TOOLS_POSTAMBLE),
    "apigen": ToolStyle("apigen", _APIGEN_PREAMBLE, _APIGEN_POSTAMBLE, schemas_as_list=True,
                        call_wrap=("<tool_call>[", "]</tool_call>")),
    "llama3": ToolStyle("llama3", _LLAMA3_PREAMBLE, "", result_role="ipython", result_wrap=("", ""),
                        merge_results=False, call_wrap=("", ""), args_key="parameters"),
}


@dataclass(frozen=True)
class TemplateProbe:
    """What a chat template does with tools, found by rendering probe conversations."""

    renders_tools: bool
    default_system: str | None  # the system text it adds when the conversation has none
    family: str  # the :data:`STYLES` key its markup suggests


_PROBES: dict[Hashable, TemplateProbe] = {}
_WARNED: set[Hashable] = set()


def probe_template(render: Render, key: Hashable | None = None) -> TemplateProbe:
    """Probe a template through ``render(messages, tools) -> text`` (no generation prompt).

    A template that cannot render a one-message conversation at all is reported as rendering
    tools, so it is left alone.

    Args:
        render: Renders a conversation with the template under test.
        key: Caches the result under this key (one probe per template and tokenizer).

    Example:
        >>> def chatml(messages, tools):  # a ChatML template that ignores tools, SmolLM2-style
        ...     head = "" if messages[0]["role"] == "system" else "<|im_start|>system\\nBe nice<|im_end|>\\n"
        ...     return head + "".join(f"<|im_start|>{m['role']}\\n{m['content']}<|im_end|>\\n" for m in messages)
        >>> probe_template(chatml)
        TemplateProbe(renders_tools=False, default_system='Be nice', family='hermes')
    """
    if key is not None and key in _PROBES:
        return _PROBES[key]
    try:
        plain = render(_PROBE_USER, None)
    except Exception as exc:  # leave such a template alone: its own error shows on the first real render
        log.debug("chat template failed to render a one-message probe: %s", exc)
        return TemplateProbe(True, None, "hermes")
    try:
        renders = _PROBE_NAME in render(_PROBE_USER, [_PROBE_TOOL]) and _PROBE_NAME not in plain
    except Exception as exc:  # a template that chokes on tools cannot render them either
        log.debug("chat template failed to render tools: %s", exc)
        renders = False
    family = "llama3" if "<|start_header_id|>" in plain else "hermes"
    probe = TemplateProbe(renders, _default_system(render, plain), family)
    if key is not None:
        _PROBES[key] = probe
    return probe


def _default_system(render: Render, plain: str) -> str | None:
    """The system text the template adds to a conversation without a system message, if any.

    The render with a known system message shows where system text sits (``head``, ``rest``);
    the user-only render with the same frame holds the default in that place. It is kept only
    when passing it as an explicit system message renders the very same text.
    """
    try:
        framed = render([{"role": "system", "content": _PROBE_SYSTEM}, *_PROBE_USER], None)
    except Exception:  # the template refuses system messages
        return None
    at = framed.find(_PROBE_SYSTEM)
    if at < 0:
        return None
    head, rest = framed[:at], framed[at + len(_PROBE_SYSTEM):]
    if not (plain.startswith(head) and plain.endswith(rest)) or len(plain) <= len(head) + len(rest):
        return None
    default = plain[len(head):len(plain) - len(rest)]
    try:
        same = render([{"role": "system", "content": default}, *_PROBE_USER], None) == plain
    except Exception:
        return None
    return default if same and default.strip() else None


def warn_dropped_tools(key: Hashable, where: str, style: str) -> None:
    """Log, once per template, that it drops ``tools=`` and the system-prompt fallback is used."""
    if key in _WARNED:
        return
    _WARNED.add(key)
    log.warning("the chat template of %s ignores tools=, so the model would never see its tool schemas; "
                "adding them to the system message in the %r style instead (ChatFormat tool_prompt=/tool_style=, "
                "or a tool-aware chat_template=, to choose)", where, style)


@dataclass(frozen=True)
class ToolPrompt:
    """Rewrites conversations for a template that drops tools (see the module docstring).

    Args:
        style: The family's wording and tool-result layout.
        default_system: The template's default system prompt, kept when a system message is added.

    Example:
        >>> tp = ToolPrompt(STYLES["hermes"], default_system="Be nice")
        >>> tool = {"type": "function", "function": {"name": "add", "parameters": {}}}
        >>> msgs = tp.apply([{"role": "user", "content": "1+2?"},
        ...                  {"role": "assistant", "content": "", "tool_calls": [
        ...                      {"function": {"name": "add", "arguments": {"a": 1}}}]},
        ...                  {"role": "tool", "content": "3"}], [tool])
        >>> print(msgs[0]["content"][:30])
        Be nice
        <BLANKLINE>
        # Tools
        <BLANKLINE>
        You may call
        >>> msgs[2]["content"], msgs[3]
        ('<tool_call>\\n{"name": "add", "arguments": {"a": 1}}\\n</tool_call>', {'role': 'user', 'content': '<tool_response>\\n3\\n</tool_response>'})
    """

    style: ToolStyle
    default_system: str | None = None

    def apply(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """The conversation to hand the template: tools in the system message, results and calls as text."""
        out = self._rewrite_turns(messages)
        if not tools:
            return out
        block = self.style.tools_text(tools)
        if out and out[0].get("role") == "system":
            system = out[0].get("content") or ""
            return [{**out[0], "content": f"{system}\n\n{block}" if system else block}, *out[1:]]
        head = f"{self.default_system}\n\n{block}" if self.default_system else block
        return [{"role": "system", "content": head}, *out]

    def _rewrite_turns(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        style, out = self.style, []
        opened, closed = style.result_wrap
        previous_was_result = False
        for m in messages:
            role = m.get("role")
            if role == "tool":
                text = f"{opened}{m.get('content') or ''}{closed}"
                if previous_was_result and style.merge_results:
                    out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + text}
                else:
                    out.append({"role": style.result_role, "content": text})
                previous_was_result = True
                continue
            previous_was_result = False
            if role == "assistant" and m.get("tool_calls"):
                calls = m["tool_calls"] if isinstance(m["tool_calls"], list) else []
                parts = [m.get("content") or "", *(style.call_text(c) for c in calls)]
                m = {k: v for k, v in m.items() if k != "tool_calls"}
                m["content"] = "\n".join(p for p in parts if p)
            elif role == "assistant" and m.get("content") is None:
                m = {**m, "content": ""}  # ChatML templates concatenate content: None would not render
            out.append(m)
        return out


__all__ = ["STYLES", "TOOL_PROMPTS", "TemplateProbe", "ToolPrompt", "ToolStyle", "probe_template",
           "warn_dropped_tools"]
