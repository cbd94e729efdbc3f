"""Token-in/token-out trajectories: append sampled ids verbatim, never re-tokenise the conversation.

A multi-turn episode's token sequence is built by appending:

1. the prompt: the chat template's render of the opening messages, tokenised once;
2. each completion's ids exactly as the engine sampled them (loss mask 1, sampler logprobs);
3. the environment's reply: the text the template puts between the end of that completion and the
   next generation prompt (tool results, role markup, the next assistant header), found as the
   difference ``render(messages_after) - rendered_so_far`` and tokenised on its own (mask 0).

A completion cut at the token limit lacks the end-of-turn token; before the environment's reply
the end-of-turn token is appended (mask 0) so the next turn reads as the template would render it.

Re-rendering can disagree with the tokens so far: a template may drop earlier ``<think>`` blocks
(*template drift*), or the canonical tokenisation of the same text may differ from what was
sampled (*tokenisation drift*, detected with ``drift_check="tokens"``). Drift is recorded as a
:class:`~toolgym.rollouts.records.DriftEvent`; the ``drift_policy`` decides what happens next:
``"keep"`` appends to the sequence as sampled, ``"split"`` closes the current sample and starts a
new one whose prompt is the fresh render (what the model sees at inference).

A template that ignores ``tools=`` (SmolLM2's) would hide the tools from the model; ChatFormat
then rewrites every conversation it renders with :mod:`toolgym.rollouts.toolprompt` (tools in the
system message, tool results as the family reads them), the same way each time, so the deltas
above stay exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from toolgym.errors import ConfigError, EnvError
from toolgym.rollouts.engines.base import Completion
from toolgym.rollouts.records import DriftEvent
from toolgym.rollouts.tiny import resolve_template
from toolgym.rollouts.toolprompt import STYLES, TOOL_PROMPTS, ToolPrompt, probe_template, warn_dropped_tools

DRIFT_POLICIES = ("keep", "split")
DRIFT_CHECKS = ("text", "tokens", "off")
_ANCHOR = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "x"}]


class ChatFormat:
    """A tokenizer plus chat template: renders conversations and tokenises text deltas.

    Tool schemas reach the model through the template when it renders ``tools=``; a template that
    drops them (SmolLM2's, plain ChatML) gets them in the system message instead, in its family's
    wording (:mod:`toolgym.rollouts.toolprompt`), with a warning logged once per template. Every
    render goes through the same rewrite, so multi-turn deltas stay token-exact.

    Args:
        tokenizer: A Hugging Face tokenizer with a chat template.
        tools: Tool schemas passed to the template.
        chat_template: Overrides the tokenizer's template (e.g. a thinking variant).
        eot_token: The template's end-of-turn token; found from the tokenizer when ``None``.
        tool_prompt: ``"auto"`` (the template's tool rendering if it has one, else the system
            message), ``"template"`` (always the template, even if it drops tools) or ``"system"``
            (always the system message; the template is given no tools).
        tool_style: A :data:`~toolgym.rollouts.toolprompt.STYLES` key for the system-message
            prompt (``hermes``, ``apigen``, ``llama3``); ``None`` picks by the template's markup.

    Example:
        >>> from transformers import AutoTokenizer
        >>> from toolgym.rollouts.tiny import tiny_model_path
        >>> fmt = ChatFormat(AutoTokenizer.from_pretrained(tiny_model_path()), [{"type": "function",
        ...                  "function": {"name": "add", "parameters": {}}}])
        >>> fmt.tool_mode, '"name": "add"' in fmt.render([{"role": "user", "content": "hi"}], True)
        ('template', True)
    """

    def __init__(self, tokenizer: Any, tools: list[dict[str, Any]] | None = None, *,
                 chat_template: str | None = None, eot_token: str | None = None, tool_prompt: str = "auto",
                 tool_style: str | None = None):
        if tool_prompt not in TOOL_PROMPTS:
            raise ConfigError(f"tool_prompt must be one of {TOOL_PROMPTS}, got {tool_prompt!r}")
        if tool_style is not None and tool_style not in STYLES:
            raise ConfigError(f"tool_style must be one of {tuple(STYLES)}, got {tool_style!r}")
        self.tokenizer = tokenizer
        self.tools = tools or None
        self.chat_template = resolve_template(chat_template)  # a name ("compact") or Jinja source
        self.eot_text = eot_token or _find_eot(tokenizer)
        self.eot_id = int(tokenizer.convert_tokens_to_ids(self.eot_text))
        self.tool_prompt = tool_prompt
        self.tool_mode = "template"  # what was chosen: "template" or "system"
        self.prompter: ToolPrompt | None = None
        if tool_prompt != "template":
            key = _template_key(tokenizer, self.chat_template)
            probe = probe_template(self._template_render, key)
            if tool_prompt == "system" or not probe.renders_tools:
                style = tool_style or probe.family
                self.tool_mode, self.prompter = "system", ToolPrompt(STYLES[style], probe.default_system)
                if tool_prompt == "auto" and self.tools:
                    warn_dropped_tools(key, getattr(tokenizer, "name_or_path", "") or "the tokenizer", style)

    def render(self, messages: list[dict[str, Any]], generation_prompt: bool, tools: Any = "default") -> str:
        """The template's text for ``messages``; ``tools="default"`` means this format's tools."""
        tools = self.tools if tools == "default" else tools
        if self.prompter is not None:  # the template drops tools: the rewritten chat carries them
            return self._template_render(self.prompter.apply(messages, tools), None, generation_prompt)
        return self._template_render(messages, tools, generation_prompt)

    def _template_render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                         generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, chat_template=self.chat_template, tokenize=False,
            add_generation_prompt=generation_prompt)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _template_key(tokenizer: Any, chat_template: str | None) -> tuple[str, str]:
    """What a probe result depends on: the tokenizer and the effective template source."""
    source = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    text = source if isinstance(source, str) else json.dumps(source, sort_keys=True, default=str)
    return str(getattr(tokenizer, "name_or_path", "")), text


def _find_eot(tokenizer: Any) -> str:
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is not None and tid != getattr(tokenizer, "unk_token_id", None):
            return tok
    if tokenizer.eos_token:
        return str(tokenizer.eos_token)
    raise ConfigError("cannot find the chat template's end-of-turn token; pass eot_token=")


@dataclass
class Segment:
    """One trainable sample's token arrays (an episode has one unless it was split at drift)."""

    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    prompt_len: int
    turn_spans: list[tuple[int, int, int, int]] = field(default_factory=list)  # start, end, env_start, env_end


@dataclass
class EnvReply:
    """What :meth:`TokenTrajectory.add_env_reply` appended, and whether it split the sample."""

    start: int
    end: int
    drift: DriftEvent | None = None
    closed: Segment | None = None  # the finished segment when the policy split


class TokenTrajectory:
    """Build one episode's token sequence turn by turn.

    Example:
        >>> from transformers import AutoTokenizer
        >>> from toolgym.rollouts.tiny import tiny_model_path
        >>> tok = AutoTokenizer.from_pretrained(tiny_model_path())
        >>> fmt = ChatFormat(tok)
        >>> msgs = [{"role": "user", "content": "2+2?"}]
        >>> tt = TokenTrajectory(fmt, msgs)
        >>> sampled = fmt.encode("Answer: 4<|im_end|>")
        >>> tt.add_completion(Completion(sampled, [-0.1] * len(sampled)))
        'Answer: 4'
        >>> tt.token_ids[tt.prompt_len:] == sampled, sum(tt.loss_mask) == len(sampled)
        (True, True)
    """

    def __init__(self, fmt: ChatFormat, messages: list[dict[str, Any]], *, drift_policy: str = "keep",
                 drift_check: str = "text"):
        if drift_policy not in DRIFT_POLICIES:
            raise ConfigError(f"drift_policy must be one of {DRIFT_POLICIES}, got {drift_policy!r}")
        if drift_check not in DRIFT_CHECKS:
            raise ConfigError(f"drift_check must be one of {DRIFT_CHECKS}, got {drift_check!r}")
        self.fmt = fmt
        self.drift_policy = drift_policy
        self.drift_check = drift_check
        self.turn = 0
        self._needs_eot = False
        self._start(fmt.render(messages, generation_prompt=True))

    def _start(self, prompt_text: str) -> None:
        self.text = prompt_text  # the template text the ids stand for
        ids = self.fmt.encode(prompt_text)
        self.segment = Segment(ids, [0] * len(ids), [0.0] * len(ids), len(ids))

    @property
    def token_ids(self) -> list[int]:
        return self.segment.token_ids

    @property
    def loss_mask(self) -> list[int]:
        return self.segment.loss_mask

    @property
    def logprobs(self) -> list[float]:
        return self.segment.logprobs

    @property
    def prompt_len(self) -> int:
        return self.segment.prompt_len

    def add_completion(self, completion: Completion) -> str:
        """Append the sampled ids (mask 1) and return the assistant text the environment receives."""
        ids = list(completion.token_ids)
        if len(completion.logprobs) != len(ids):
            raise ValueError(f"{len(ids)} token ids but {len(completion.logprobs)} logprobs")
        seg = self.segment
        seg.token_ids.extend(ids)
        seg.loss_mask.extend([1] * len(ids))
        seg.logprobs.extend(float(x) for x in completion.logprobs)
        ended = bool(ids) and ids[-1] == self.fmt.eot_id
        self._needs_eot = not ended
        self.text += self.fmt.decode(ids)
        content_ids = ids[:-1] if ended or (ids and completion.finish_reason == "stop") else ids
        return self.fmt.decode(content_ids)

    def add_env_reply(self, messages_after: list[dict[str, Any]]) -> EnvReply:
        """Append the environment's reply (mask 0) given the whole conversation after it."""
        self.turn += 1
        start = len(self.token_ids)
        if self._needs_eot:  # cut at the token limit (or stopped on another token): close the turn
            self._append_env([self.fmt.eot_id])
            self.text += self.fmt.eot_text
            self._needs_eot = False
        rendered = self.fmt.render(messages_after, generation_prompt=True)
        if rendered.startswith(self.text):
            delta_ids = self.fmt.encode(rendered[len(self.text):])
            drift = self._token_drift(rendered, delta_ids)
            self._append_env(delta_ids)
            self.text = rendered
            return EnvReply(start, len(self.token_ids), drift)
        drift = DriftEvent(turn=self.turn, kind="template", position=self._first_difference(rendered),
                           action=self.drift_policy)
        if self.drift_policy == "split":
            closed = self.segment
            self._start(rendered)
            return EnvReply(start, len(closed.token_ids), drift, closed)
        delta = self._anchored_delta(messages_after)
        self._append_env(self.fmt.encode(delta))
        self.text += delta
        return EnvReply(start, len(self.token_ids), drift)

    def close_turn(self, start: int, end: int, env_start: int, env_end: int) -> None:
        self.segment.turn_spans.append((start, end, env_start, env_end))

    def _append_env(self, ids: list[int]) -> None:
        self.segment.token_ids.extend(ids)
        self.segment.loss_mask.extend([0] * len(ids))
        self.segment.logprobs.extend([0.0] * len(ids))

    def _token_drift(self, rendered: str, delta_ids: list[int]) -> DriftEvent | None:
        if self.drift_check != "tokens":
            return None
        canonical = self.fmt.encode(rendered)
        ours = self.token_ids + delta_ids
        if canonical == ours:
            return None
        pos = next((i for i, (a, b) in enumerate(zip(canonical, ours, strict=False)) if a != b),
                   min(len(canonical), len(ours)))
        return DriftEvent(turn=self.turn, kind="tokenization", position=pos, action="keep")

    def _first_difference(self, rendered: str) -> int:
        common = 0
        for a, b in zip(rendered, self.text, strict=False):
            if a != b:
                break
            common += 1
        return len(self.fmt.encode(self.text[:common]))

    def _anchored_delta(self, messages_after: list[dict[str, Any]]) -> str:
        """The reply's template text, rendered after a neutral anchor turn instead of the real history.

        Used when the real history re-renders differently (template drift): the text between an
        assistant turn's end and the next generation prompt does not depend on what came before.
        """
        new = _messages_after_last_assistant(messages_after)
        before = self.fmt.render(_ANCHOR, generation_prompt=False, tools=None)
        after = self.fmt.render(_ANCHOR + new, generation_prompt=True, tools=None)
        cut = before.rfind(self.fmt.eot_text)
        if cut < 0 or not after.startswith(before):
            raise EnvError("the chat template cannot be diffed: appending messages changes earlier text")
        return before[cut + len(self.fmt.eot_text):] + after[len(before):]


def _messages_after_last_assistant(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            return messages[i + 1:]
    return list(messages)


def conversation_tokens(fmt: ChatFormat, messages: list[dict[str, Any]]) -> Segment:
    """Tokenise a finished chat (e.g. an env's demonstration) exactly as a rollout would have.

    Assistant turns become "sampled" ids (content + end-of-turn, mask 1); everything else is
    prompt or environment tokens (mask 0), found with the same template deltas as in rollouts, so
    supervised warm-up and RL see identical token layouts. Logprobs are 0.0.

    Example:
        >>> from transformers import AutoTokenizer
        >>> from toolgym.rollouts.tiny import tiny_model_path
        >>> fmt = ChatFormat(AutoTokenizer.from_pretrained(tiny_model_path()))
        >>> seg = conversation_tokens(fmt, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
        >>> fmt.decode([t for t, m in zip(seg.token_ids, seg.loss_mask) if m])
        'yo<|im_end|>'
    """
    turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not turns:
        raise ValueError("the conversation has no assistant turn")
    tt = TokenTrajectory(fmt, messages[: turns[0]])
    for k, i in enumerate(turns):
        ids = fmt.encode(messages[i].get("content") or "") + [fmt.eot_id]
        start = len(tt.token_ids)
        tt.add_completion(Completion(ids, [0.0] * len(ids)))
        end = len(tt.token_ids)
        if k + 1 < len(turns):
            reply = tt.add_env_reply(messages[: turns[k + 1]])
            if reply.closed is not None:
                raise ValueError("the chat template re-renders earlier turns differently; use a plain template")
            tt.close_turn(start, end, reply.start, reply.end)
        else:
            tt.close_turn(start, end, end, end)
    return tt.segment
