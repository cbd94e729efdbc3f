"""Tool-call parsers: never raise, every call is usable or carries an error, valid calls round-trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from toolgym.envs.parsing import (
    MAX_CALL_CHARS,
    MAX_CALLS_PER_TURN,
    ParsedTurn,
    parse_action,
    parse_hermes,
    parse_llama3,
    parse_openai,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_turn(turn: ParsedTurn) -> None:
    """The parser contract: text content, and each call either usable or explained."""
    assert isinstance(turn, ParsedTurn)
    assert isinstance(turn.content, str)
    assert len(turn.calls) <= MAX_CALLS_PER_TURN + 1
    for call in turn.calls:
        assert isinstance(call.id, str) and call.id
        if call.error is None:
            assert isinstance(call.name, str) and call.name
            assert isinstance(call.arguments, dict)
        else:
            assert isinstance(call.error, str) and call.error
    assert turn.errors == [c for c in turn.calls if c.error]


# ---------------------------------------------------------------- strategies

scalars = (st.none() | st.booleans() | st.integers(-(10**18), 10**18)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
arguments = st.dictionaries(st.text(max_size=12), json_values, max_size=5)
names = st.text(min_size=1, max_size=30)
# prose around calls; an opening tag in prose would start a call of its own
prose = st.text(max_size=40).filter(lambda t: "<tool_call>" not in t)


def dumps(obj, ascii_only: bool) -> str:
    return json.dumps(obj, ensure_ascii=ascii_only)


@st.composite
def near_valid_payloads(draw) -> str:
    """JSON that is almost a tool call: wrong shapes, string arguments, truncation, size."""
    name, args = draw(names), draw(arguments)
    kind = draw(st.sampled_from(["valid", "args_string", "args_bad_string", "non_dict", "no_name", "name_not_str",
                                 "args_not_dict", "truncated", "huge", "deep", "random_json", "params_key"]))
    if kind == "valid":
        return json.dumps({"name": name, "arguments": args})
    if kind == "args_string":
        return json.dumps({"name": name, "arguments": json.dumps(args)})
    if kind == "args_bad_string":
        return json.dumps({"name": name, "arguments": draw(st.text(max_size=20))})
    if kind == "non_dict":
        return json.dumps(draw(st.lists(json_values, max_size=3) | scalars))
    if kind == "no_name":
        return json.dumps({"arguments": args})
    if kind == "name_not_str":
        return json.dumps({"name": draw(json_values.filter(lambda v: not isinstance(v, str))), "arguments": args})
    if kind == "args_not_dict":
        return json.dumps({"name": name, "arguments": draw(st.lists(json_values, max_size=3) | scalars)})
    if kind == "truncated":
        full = json.dumps({"name": name, "arguments": args})
        return full[: draw(st.integers(0, max(0, len(full) - 1)))]
    if kind == "huge":
        return json.dumps({"name": name, "arguments": {"x": "y" * (MAX_CALL_CHARS + draw(st.integers(0, 10)))}})
    if kind == "deep":
        depth = draw(st.integers(1, 200_000))
        return "[" * depth + "]" * draw(st.integers(0, depth))
    if kind == "params_key":
        return json.dumps({"name": name, "parameters": args})
    return json.dumps(draw(json_values))


pieces = st.one_of(
    prose, near_valid_payloads(), st.sampled_from(["<tool_call>", "</tool_call>", "<tool_call", "</tool_", "{", "}",
                                                    "<|python_tag|>", ";", "\n", "<think>", "</think>"]),
    near_valid_payloads().map(lambda p: f"<tool_call>{p}</tool_call>"),
    near_valid_payloads().map(lambda p: f"<tool_call><tool_call>{p}</tool_call></tool_call>"),
    near_valid_payloads().map(lambda p: f"<tool_call>{p}"),
)
model_text = st.one_of(st.text(), st.lists(pieces, max_size=8).map("".join))


# ---------------------------------------------------------------- never raise, contract holds


@FAST
@given(model_text)
def test_text_parsers_never_raise(text):
    for parse in (parse_hermes, parse_llama3, parse_action):
        check_turn(parse(text))
    check_turn(parse_action(text, fmt="hermes"))
    check_turn(parse_action(text, fmt="llama3"))


@FAST
@given(st.lists(near_valid_payloads(), min_size=1, max_size=4))
def test_llama3_near_valid_calls_never_raise(payloads):
    for sep in ("; ", "\n"):
        check_turn(parse_llama3(sep.join(payloads)))
        check_turn(parse_llama3("<|python_tag|>" + sep.join(payloads)))


garbage = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8) | st.integers(), inner,
                                                                 max_size=3),
    max_leaves=10,
)
functions = st.fixed_dictionaries({}, optional={
    "name": names | garbage, "arguments": arguments.map(json.dumps) | arguments | garbage | st.text(max_size=30)})
raw_calls = st.fixed_dictionaries({}, optional={"id": garbage, "type": garbage, "function": functions | garbage})
messages = st.fixed_dictionaries({}, optional={
    "role": garbage, "content": garbage | model_text,
    "tool_calls": st.lists(raw_calls | garbage, max_size=MAX_CALLS_PER_TURN + 3) | garbage,
})


@FAST
@given(messages)
def test_openai_messages_with_garbage_fields_never_raise(message):
    check_turn(parse_openai(message))
    check_turn(parse_action(message))


@pytest.mark.parametrize("action", [None, 42, 3.5, ["a"], b"bytes", ("t",), object()])
def test_parse_action_rejects_non_text_without_raising(action):
    turn = parse_action(action)
    assert turn.content == ""
    assert len(turn.calls) == 1 and "action must be text or a message" in turn.calls[0].error


# ---------------------------------------------------------------- round trips


@st.composite
def call_lists(draw, max_calls: int = MAX_CALLS_PER_TURN) -> list[tuple[str, dict]]:
    return draw(st.lists(st.tuples(names, arguments), min_size=1, max_size=max_calls))


@ROUND_TRIP
@given(call_lists(), st.lists(prose, min_size=MAX_CALLS_PER_TURN + 1, max_size=MAX_CALLS_PER_TURN + 1),
       st.booleans())
def test_hermes_calls_round_trip(calls, texts, ascii_only):
    payloads = [dumps({"name": n, "arguments": a}, ascii_only) for n, a in calls]
    assume(all("</tool_call>" not in p for p in payloads))  # nested closing tags: see the dedicated test below
    text = texts[0] + "".join(f"<tool_call>{p}</tool_call>{t}" for p, t in zip(payloads, texts[1:], strict=False))
    for turn in (parse_hermes(text), parse_action(text)):
        check_turn(turn)
        assert [(c.name, c.arguments, c.error) for c in turn.calls] == [(n, a, None) for n, a in calls]
        assert len({c.id for c in turn.calls}) == len(calls)
        assert turn.content == "".join(texts[: len(calls) + 1]).strip()


@ROUND_TRIP
@given(call_lists(), st.sampled_from(["; ", ";", "\n", " "]), st.booleans(), st.booleans())
def test_llama3_calls_round_trip(calls, sep, tagged, ascii_only):
    text = sep.join(dumps({"name": n, "parameters": a}, ascii_only) for n, a in calls)
    text = ("<|python_tag|>" if tagged else "") + text
    assume(len(text) <= MAX_CALL_CHARS)
    # auto-detection reads Hermes tags first, so a Llama call quoting "<tool_call>" needs fmt="llama3"
    auto = [] if "<tool_call>" in text else [parse_action(text)]
    for turn in [parse_llama3(text), parse_action(text, fmt="llama3"), *auto]:
        check_turn(turn)
        assert [(c.name, c.arguments, c.error) for c in turn.calls] == [(n, a, None) for n, a in calls]
        assert turn.content == ""


@ROUND_TRIP
@given(call_lists(), st.booleans(), prose)
def test_openai_calls_round_trip(calls, encoded, content):
    message = {"role": "assistant", "content": content, "tool_calls": [
        {"id": f"id-{i}", "type": "function",
         "function": {"name": n, "arguments": json.dumps(a) if encoded else a}} for i, (n, a) in enumerate(calls)]}
    for turn in (parse_openai(message), parse_action(message)):
        check_turn(turn)
        assert [(c.id, c.name, c.arguments, c.error) for c in turn.calls] == [
            (f"id-{i}", n, a, None) for i, (n, a) in enumerate(calls)]
        assert turn.content == content.strip()


# ---------------------------------------------------------------- specific malformed inputs


def test_hermes_specific_failures():
    turn = parse_hermes('<tool_call>{"name": "f", "arguments": {"a": 1}}')
    assert turn.calls[0].error == "unclosed <tool_call> tag"
    turn = parse_hermes("<tool_call>not json</tool_call>")
    assert "not valid JSON" in turn.calls[0].error
    turn = parse_hermes("<tool_call>[1, 2]</tool_call>")
    assert "must be a JSON object" in turn.calls[0].error
    turn = parse_hermes('<tool_call>{"name": "f", "arguments": "[1]"}</tool_call>')
    assert (turn.calls[0].name, turn.calls[0].error) == ("f", "tool call arguments must be a JSON object")
    turn = parse_hermes('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert (turn.calls[0].arguments, turn.calls[0].error) == ({"a": 1}, None)
    turn = parse_hermes('<tool_call>{"name": "f", "arguments": ""}</tool_call>')
    assert (turn.calls[0].arguments, turn.calls[0].error) == ({}, None)
    turn = parse_hermes("<tool_call>" + "[" * (MAX_CALL_CHARS - 1) + "</tool_call>")  # too deep to decode
    assert "not valid JSON" in turn.calls[0].error
    turn = parse_hermes('<tool_call><tool_call>{"name": "f", "arguments": {}}</tool_call></tool_call>')
    assert len(turn.calls) == 1 and turn.calls[0].error


def test_oversized_calls_are_refused_in_every_format():
    big = {"x": "y" * MAX_CALL_CHARS}
    hermes = parse_hermes(f"<tool_call>{json.dumps({'name': 'f', 'arguments': big})}</tool_call>")
    llama = parse_llama3(json.dumps({"name": "f", "parameters": big}))
    openai = parse_openai({"tool_calls": [{"function": {"name": "f", "arguments": json.dumps(big)}}]})
    for turn in (hermes, llama, openai):
        assert len(turn.calls) == 1 and "too large" in turn.calls[0].error


def test_hermes_too_many_calls_adds_an_error():
    one = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    turn = parse_hermes(one * (MAX_CALLS_PER_TURN + 5))
    assert len(turn.calls) == MAX_CALLS_PER_TURN + 1
    assert all(c.error is None for c in turn.calls[:-1])
    assert "more than" in turn.calls[-1].error


def test_llama3_plain_text_stays_text():
    for text in ('{"answer": 4}', "{not json at all", '{"name": "Ada"} is the answer'):
        turn = parse_action(text)
        assert (turn.calls, turn.content) == ([], text)


def test_openai_falls_back_to_hermes_tags_in_content():
    turn = parse_openai({"content": 'x <tool_call>{"name": "f", "arguments": {"a": 2}}</tool_call>'})
    assert (turn.content, turn.calls[0].name, turn.calls[0].arguments) == ("x", "f", {"a": 2})
    assert parse_openai({"tool_calls": "nope"}).calls[0].error == "tool_calls must be a list"


def test_hermes_closing_tag_inside_an_argument_string():
    payload = json.dumps({"name": "write_file", "arguments": {"text": "a </tool_call> b"}})
    turn = parse_hermes(f"<tool_call>{payload}</tool_call>")
    assert [(c.name, c.arguments, c.error) for c in turn.calls] == [("write_file", {"text": "a </tool_call> b"},
                                                                     None)]


def test_llama3_too_many_calls_adds_an_error():
    text = "; ".join([json.dumps({"name": "f", "parameters": {}})] * (MAX_CALLS_PER_TURN + 5))
    turn = parse_llama3(text)
    assert len(turn.calls) == MAX_CALLS_PER_TURN + 1
    assert "more than" in (turn.calls[-1].error or "")


# ---------------------------------------------------------------- call lists, Llama tags (SmolLM2, Llama 3.x)


@ROUND_TRIP
@given(call_lists(), prose, st.booleans())
def test_hermes_json_list_of_calls_round_trips(calls, before, ascii_only):
    """SmolLM2 (APIGen SFT) writes every call of a turn as one JSON list inside one <tool_call>."""
    payload = dumps([{"name": n, "arguments": a} for n, a in calls], ascii_only)
    assume("</tool_call>" not in payload)
    text = f"{before}<tool_call>[\n{payload[1:-1]}\n]</tool_call>"
    for turn in (parse_hermes(text), parse_action(text)):
        check_turn(turn)
        assert [(c.name, c.arguments, c.error) for c in turn.calls] == [(n, a, None) for n, a in calls]
        assert [c.id for c in turn.calls] == [f"call_{i}" for i in range(len(calls))]
        assert turn.content == before.strip()


def test_hermes_lists_mix_with_single_blocks_and_count_towards_the_cap():
    one = '<tool_call>{"name": "f", "arguments": {}}</tool_call>'
    two = '<tool_call>[{"name": "g", "arguments": {"x": 1}}, {"name": "h"}]</tool_call>'
    turn = parse_hermes(one + two + one)
    assert [(c.name, c.id) for c in turn.calls] == [("f", "call_0"), ("g", "call_1"), ("h", "call_2"),
                                                    ("f", "call_3")]
    assert turn.calls[2].arguments == {}  # no arguments key: no arguments
    many = "<tool_call>" + json.dumps([{"name": "f", "arguments": {}}] * (MAX_CALLS_PER_TURN + 4)) + "</tool_call>"
    turn = parse_hermes(many)
    assert len(turn.calls) == MAX_CALLS_PER_TURN + 1 and "more than" in turn.calls[-1].error
    turn = parse_hermes(one * (MAX_CALLS_PER_TURN - 1) + two)  # the list crosses the cap
    assert len(turn.calls) == MAX_CALLS_PER_TURN + 1 and turn.calls[-2].name == "g"


def test_hermes_list_elements_fail_one_by_one():
    turn = parse_hermes('<tool_call>[{"name": "f", "arguments": {}}, 3, {"arguments": {}}]</tool_call>')
    assert [(c.name, c.error is None) for c in turn.calls] == [("f", True), ("", False), ("", False)]
    assert "must be a JSON object" in turn.calls[1].error and '"name"' in turn.calls[2].error
    empty = parse_hermes("No tool fits. <tool_call>[]</tool_call>")  # APIGen's "no call needed"
    assert (empty.calls, empty.content) == ([], "No tool fits.")
    assert parse_hermes('<tool_call>[{"name": "f"}, </tool_call>').calls[0].error.startswith("tool call is not valid")


def test_hermes_accepts_llama_parameters_key():
    turn = parse_hermes('<tool_call>{"name": "f", "parameters": {"a": 1}}</tool_call>')
    assert (turn.calls[0].name, turn.calls[0].arguments) == ("f", {"a": 1})


@pytest.mark.parametrize("text", [
    '[{"name": "f", "parameters": {"a": 1}}, {"name": "g", "parameters": {}}]',
    '<|python_tag|>[{"name": "f", "parameters": {"a": 1}}, {"name": "g", "parameters": {}}]',
    '<|python_tag|>{"name": "f", "parameters": {"a": 1}}; {"name": "g", "parameters": {}}',
    '{"type": "function", "name": "f", "parameters": {"a": 1}}\n{"name": "g", "arguments": {}}',
])
def test_llama3_lists_and_tags(text):
    for turn in (parse_llama3(text), parse_action(text)):
        check_turn(turn)
        assert [(c.name, c.arguments, c.error) for c in turn.calls] == [("f", {"a": 1}, None), ("g", {}, None)]
        assert turn.content == ""


def test_llama3_text_before_python_tag_is_content():
    turn = parse_action('I will add them.\n<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}')
    assert turn.content == "I will add them."
    assert [(c.name, c.arguments) for c in turn.calls] == [("add", {"a": 1, "b": 2})]


@pytest.mark.parametrize("text", ['<|python_tag|>brave_search.call(query="x")', "<|python_tag|>print(1 + 2)",
                                  "<|python_tag|>", '<|python_tag|>{"name": "f", "parameters": {"a": 1}'])
def test_llama3_non_json_after_tag_is_an_error_call(text):
    for turn in (parse_llama3(text), parse_action(text)):
        check_turn(turn)
        assert len(turn.calls) == 1 and turn.calls[0].error


@pytest.mark.parametrize("text", ["[1, 2, 3]", "[]", '[{"name": "Ada"}]', '["a", {"name": "f", "parameters": {}}]',
                                  '{"answer": 4} <|python_tag|>'])
def test_llama3_json_answers_stay_text(text):
    turn = parse_action(text)
    assert (turn.calls, turn.content) == ([], text)
