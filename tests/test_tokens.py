"""Token-in/token-out: sampled ids kept verbatim, env tokens from template deltas, drift detected."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from toolgym.errors import ConfigError
from toolgym.rollouts.engines.base import Completion
from toolgym.rollouts.tiny import CHAT_TEMPLATE, THINKING_CHAT_TEMPLATE, tiny_model_path
from toolgym.rollouts.tokens import ChatFormat, TokenTrajectory

TOOLS = [{"type": "function", "function": {"name": "calculator", "description": "Evaluate.",
                                           "parameters": {"type": "object", "properties": {}}}}]
CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1 + 2"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(tiny_model_path())


def _fmt(tok, template=CHAT_TEMPLATE):
    return ChatFormat(tok, TOOLS, chat_template=template)


def _sample(fmt, text, eot=True):
    ids = fmt.encode(text) + ([fmt.eot_id] if eot else [])
    return Completion(ids, [-0.5 - i / 100 for i in range(len(ids))], "stop" if eot else "length")


def _episode(tt, fmt, replies, messages):
    """Feed completions and tool replies; return what was sampled per turn."""
    sampled = []
    for i, reply in enumerate(replies):
        c = _sample(fmt, reply) if isinstance(reply, str) else reply
        start = len(tt.token_ids)
        content = tt.add_completion(c)
        sampled.append((start, c))
        messages = [*messages, {"role": "assistant", "content": content}]
        if i < len(replies) - 1:
            messages.append({"role": "tool", "name": "calculator", "content": str(i + 3)})
            tt.add_env_reply(messages)
    return sampled, messages


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, THINKING_CHAT_TEMPLATE], ids=["plain", "thinking"])
def test_sampled_ids_verbatim_and_mask_exact(tok, template):
    fmt = _fmt(tok, template)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 1 + 2?"}]
    tt = TokenTrajectory(fmt, messages)
    prompt = fmt.encode(fmt.render(messages, generation_prompt=True))
    sampled, final = _episode(tt, fmt, [CALL, CALL, "Answer: 4"], messages)
    assert tt.token_ids[: tt.prompt_len] == prompt
    sampled_positions = set()
    for start, c in sampled:
        assert tt.token_ids[start:start + len(c.token_ids)] == c.token_ids
        assert tt.logprobs[start:start + len(c.token_ids)] == c.logprobs
        sampled_positions |= set(range(start, start + len(c.token_ids)))
    assert {i for i, m in enumerate(tt.loss_mask) if m} == sampled_positions
    assert all(lp == 0.0 for lp, m in zip(tt.logprobs, tt.loss_mask, strict=True) if not m)
    # no think blocks, so both templates re-render the conversation to exactly these tokens
    full = fmt.render(final, generation_prompt=False)
    assert fmt.decode(tt.token_ids) + "\n" == full
    assert tt.token_ids == fmt.encode(full)[:-1]


def test_env_tokens_are_the_template_delta(tok):
    fmt = _fmt(tok)
    msgs = [{"role": "user", "content": "q"}]
    tt = TokenTrajectory(fmt, msgs)
    content = tt.add_completion(_sample(fmt, CALL))
    reply = tt.add_env_reply([*msgs, {"role": "assistant", "content": content},
                              {"role": "tool", "name": "calculator", "content": "3"},
                              {"role": "tool", "name": "calculator", "content": "4"}])
    env_text = fmt.decode(tt.token_ids[reply.start:reply.end])
    assert env_text == ("\n<|im_start|>user\n<tool_response>\n3\n</tool_response>\n<tool_response>\n4\n"
                        "</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert reply.drift is None


def test_completion_cut_at_token_limit_gets_masked_end_of_turn(tok):
    fmt = _fmt(tok)
    msgs = [{"role": "user", "content": "q"}]
    tt = TokenTrajectory(fmt, msgs)
    cut = _sample(fmt, '<tool_call>\n{"name": "calc', eot=False)
    content = tt.add_completion(cut)
    end = len(tt.token_ids)
    assert content == '<tool_call>\n{"name": "calc'
    after = [*msgs, {"role": "assistant", "content": content}, {"role": "tool", "name": "x", "content": "Error"}]
    reply = tt.add_env_reply(after)
    assert tt.token_ids[end] == fmt.eot_id and tt.loss_mask[end] == 0 and tt.logprobs[end] == 0.0
    assert reply.drift is None  # the next turn reads exactly as the template renders it
    assert fmt.decode(tt.token_ids) == fmt.render(after, generation_prompt=True)


def test_thinking_template_drift_keep_and_split(tok):
    msgs = [{"role": "user", "content": "q"}]
    think = "<think>\nadd them\n</think>\n\n" + CALL
    for policy in ("keep", "split"):
        fmt = _fmt(tok, THINKING_CHAT_TEMPLATE)
        tt = TokenTrajectory(fmt, msgs, drift_policy=policy)
        c = _sample(fmt, think)
        content = tt.add_completion(c)
        before = list(tt.token_ids)
        after = [*msgs, {"role": "assistant", "content": content}, {"role": "tool", "name": "calculator", "content": "3"}]
        reply = tt.add_env_reply(after)
        assert reply.drift is not None and reply.drift.kind == "template" and reply.drift.action == policy
        assert 0 < reply.drift.position <= len(before)
        if policy == "keep":
            assert tt.token_ids[: len(before)] == before  # what was sampled stays, think block included
            assert fmt.decode(tt.token_ids[len(before):]) == (
                "\n<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
        else:
            assert reply.closed is not None and reply.closed.token_ids == before
            assert tt.token_ids == fmt.encode(fmt.render(after, generation_prompt=True))  # the fresh render
            assert "add them" not in fmt.decode(tt.token_ids) and sum(tt.loss_mask) == 0
            assert tt.prompt_len == len(tt.token_ids)


def test_plain_template_keeps_think_blocks_without_drift(tok):
    fmt = _fmt(tok)
    msgs = [{"role": "user", "content": "q"}]
    tt = TokenTrajectory(fmt, msgs)
    content = tt.add_completion(_sample(fmt, "<think>\nhm\n</think>\n\n" + CALL))
    reply = tt.add_env_reply([*msgs, {"role": "assistant", "content": content},
                              {"role": "tool", "name": "calculator", "content": "3"}])
    assert reply.drift is None


def test_tokenization_drift_detected_only_when_asked(tok):
    msgs = [{"role": "user", "content": "q"}]
    # " apples" sampled letter by letter: same text, non-canonical ids
    odd = [i for ch in "Answer apples" for i in tok.encode(ch, add_special_tokens=False)]
    odd = odd + tok.encode(json.dumps({"a": 1}), add_special_tokens=False)
    for check, expect in (("text", None), ("tokens", "tokenization")):
        fmt = _fmt(tok)
        tt = TokenTrajectory(fmt, msgs, drift_check=check)
        c = Completion(odd + [fmt.eot_id], [-1.0] * (len(odd) + 1))
        start = len(tt.token_ids)
        content = tt.add_completion(c)
        reply = tt.add_env_reply([*msgs, {"role": "assistant", "content": content},
                                  {"role": "tool", "name": "c", "content": "1"}])
        assert tt.token_ids[start:start + len(c.token_ids)] == c.token_ids  # never re-tokenised
        assert (reply.drift.kind if reply.drift else None) == expect
        if expect:
            assert reply.drift.position >= start


def test_bad_policy_and_logprob_mismatch_are_errors(tok):
    fmt = _fmt(tok)
    with pytest.raises(ConfigError):
        TokenTrajectory(fmt, [{"role": "user", "content": "q"}], drift_policy="merge")
    tt = TokenTrajectory(fmt, [{"role": "user", "content": "q"}])
    with pytest.raises(ValueError, match="logprobs"):
        tt.add_completion(Completion([1, 2], [0.0]))


def test_conversation_tokens_match_a_rollout_of_the_same_chat(tok):
    from toolgym.rollouts.tokens import conversation_tokens

    fmt = _fmt(tok)
    messages = [{"role": "user", "content": "What is 1 + 2?"}]
    tt = TokenTrajectory(fmt, messages)
    _, final = _episode(tt, fmt, [CALL, "Answer: 3"], messages)
    seg = conversation_tokens(fmt, final)
    assert seg.token_ids == tt.token_ids and seg.loss_mask == tt.loss_mask and seg.prompt_len == tt.prompt_len
    assert len(seg.turn_spans) == 2 and seg.turn_spans[1][1] == len(seg.token_ids)
    with pytest.raises(ValueError):
        conversation_tokens(fmt, messages)


# ChatML that ignores tools= and drops past <think> blocks: the tool prompt is injected (toolprompt.py)
_THINK_CHATML = (
    "{% for message in messages %}{% set content = message['content'] %}"
    "{% if message['role'] == 'assistant' and not loop.last and '</think>' in content %}"
    "{% set content = content.split('</think>')[-1].lstrip('\\n') %}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.mark.parametrize("policy", ["keep", "split"])
def test_injected_tool_prompt_holds_through_template_drift(tok, policy):
    """The anchored delta (keep) and the fresh render (split) go through the same rewrite."""
    fmt = _fmt(tok, _THINK_CHATML)
    assert fmt.tool_mode == "system"
    msgs = [{"role": "user", "content": "q"}]
    tt = TokenTrajectory(fmt, msgs, drift_policy=policy)
    assert "# Tools" in fmt.decode(tt.token_ids)
    content = tt.add_completion(_sample(fmt, "<think>\nadd them\n</think>\n\n" + CALL))
    before = len(tt.token_ids)
    after = [*msgs, {"role": "assistant", "content": content}, {"role": "tool", "name": "calculator", "content": "3"}]
    reply = tt.add_env_reply(after)
    assert reply.drift is not None and reply.drift.kind == "template"
    if policy == "keep":
        assert fmt.decode(tt.token_ids[before:]) == (
            "\n<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    else:
        assert tt.token_ids == fmt.encode(fmt.render(after, generation_prompt=True))
        assert fmt.decode(tt.token_ids).count("# Tools") == 1
