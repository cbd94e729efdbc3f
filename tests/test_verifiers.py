"""Reward checkers under adversarial answers: empty, None, huge, unicode, hidden, equivalent forms."""

from __future__ import annotations

import math
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolgym.errors import ConfigError
from toolgym.verifiers import checks
from toolgym.verifiers.answers import extract_answer
from toolgym.verifiers.checks import (
    MAX_MATH_CHARS,
    exact_match,
    format_check,
    json_schema_check,
    math_equivalent,
    normalize_answer,
    numeric_close,
    parse_number,
    regex_format,
    token_f1,
)
from toolgym.verifiers.group import majority_agreement, majority_answer, shortest_correct_bonus
from toolgym.verifiers.rubric import Rubric

MB = 1_000_000
HIDDEN_IN_TOOL_CALL = '<tool_call>{"name":"f","arguments":{"x":"42"}}</tool_call>'
POINT_CHECKERS = [math_equivalent, exact_match, token_f1, numeric_close]


def in_thread(fn, *args):
    """Run ``fn`` in a worker thread (the math worker process path)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


# ---------------------------------------------------------------- answer extraction


@pytest.mark.parametrize("text", [
    HIDDEN_IN_TOOL_CALL,
    '<tool_call>{"name":"f","arguments":{"x":"Answer: 42"}}</tool_call>',
    '<tool_call>{"name":"f","arguments":{"x":"\\\\boxed{42}"}}</tool_call>',
    '<tool_call>{"name":"f","arguments":{"x":"<answer>42</answer>"}}</tool_call>',
    'Let me check. <tool_call>{"name":"f","arguments":{"x":"Answer: 42"}',  # unclosed tag swallows the rest
    "<think>Answer: 42</think>",
    "<think>unclosed reasoning... Answer: 42",
])
def test_answers_hidden_in_tool_calls_or_reasoning_do_not_count(text):
    assert extract_answer(text) is None
    answer = extract_answer(text)
    assert math_equivalent(answer, "42") == 0.0
    assert exact_match(answer, "42") == 0.0
    assert numeric_close(answer, "42") == 0.0
    assert token_f1(answer, "42") == 0.0


def test_visible_answer_counts_but_the_tool_call_copy_does_not():
    text = 'Answer: 41 <tool_call>{"name":"f","arguments":{"x":"Answer: 42"}}</tool_call>'
    assert extract_answer(text) == "41"
    assert math_equivalent(extract_answer(text), "42") == 0.0
    assert extract_answer("<think>Answer: 42</think>Answer: 41") == "41"


@pytest.mark.parametrize("text", [
    r"\boxed{1} \boxed{2}",
    " ".join(rf"\boxed{{{i}}}" for i in range(200)),
    "<answer>3</answer> <answer>4</answer>",
])
def test_several_different_answers_are_no_answer(text):
    assert extract_answer(text) is None


def test_repeated_identical_boxed_answer_is_one_answer():
    assert extract_answer(r"\boxed{7} so indeed \boxed{7}") == "7"
    assert extract_answer(r"\boxed{\frac{1}{2}}") == r"\frac{1}{2}"


def test_extraction_of_empty_none_and_huge_text():
    assert extract_answer("") is None
    assert extract_answer(None) is None  # type: ignore[arg-type]
    assert extract_answer("Answer: " + "9" * MB) is None  # longer than MAX_ANSWER_CHARS
    assert extract_answer("x" * MB + "\nAnswer: 42") == "42"
    assert extract_answer(r"\boxed{" + "1" * MB) is None  # unclosed brace


# ---------------------------------------------------------------- math_equivalent


@pytest.mark.parametrize(("answer", "reference"), [
    (r"\frac{1}{2}", "0.5"), ("0.5", r"\frac{1}{2}"), ("1/2", r"\frac{1}{2}"), (r"\dfrac{1}{2}", "1/2"),
    (r"\frac12", "0.5"), (r"$\frac{1}{2}$", "0.5"), ("0.50", "1/2"), ("x+1", "1+x"), (r"\sqrt{2}", "2^{1/2}"),
    ("  42  ", "42"), (r"\boxed{42}", "42"), ("1,234", "1234"), (r"\pi", r"\pi"), ("(1,2)", "(1, 2)"),
    (r"\{1,2\}", r"\{2,1\}"), (r"\text{Paris}", "paris"), ("PARIS", "Paris"),
    ("４２", "42"), ("½", "0.5"), ("\u22120.5", r"-\frac12"),
])
def test_math_equivalent_forms(answer, reference):
    assert math_equivalent(answer, reference) == 1.0


@pytest.mark.parametrize(("answer", "reference"), [
    ("0.51", "0.5"), ("41", "42"), ("-0.5", "0.5"), ("x+2", "x+1"), ("3 or 4", "3"), ("3, 4", "3"),
    ("1, 2, 3, 4, 5, 6, 7, 8, 9, 10", "7"), ("cba", "abc"), ("sirap", "paris"), ("no", "yes"), ("x", "42"),
])
def test_math_equivalent_rejects(answer, reference):
    assert math_equivalent(answer, reference) == 0.0


def test_math_equivalent_none_empty_and_not_applicable():
    assert math_equivalent(None, "1") == 0.0
    assert math_equivalent("", "1") == 0.0
    assert math_equivalent("   ", "1") == 0.0
    assert math_equivalent("1", None) is None
    assert math_equivalent("1", []) is None
    assert math_equivalent("1", ["", None]) is None  # type: ignore[list-item]


def test_math_equivalent_reference_list_and_number():
    assert math_equivalent("0.25", ["1/3", r"\frac14"]) == 1.0
    assert math_equivalent("0.2", ["1/3", r"\frac14"]) == 0.0
    assert math_equivalent("42", 42) == 1.0


def test_math_equivalent_caps_length():
    # numerically 42, but too long to parse: refused unparsed rather than risking a slow parse
    assert math_equivalent("0" * MAX_MATH_CHARS + "42", "42") == 0.0
    assert math_equivalent("1" * MB, "1") == 0.0
    assert math_equivalent("+".join(["1"] * MB), "1") == 0.0


def test_math_equivalent_from_a_worker_thread_matches_main_thread():
    cases = [(r"\frac{1}{2}", "0.5"), ("x+1", "1+x"), ("41", "42"), ("cba", "abc"), ("1/2", ["0.3", "0.5"])]
    expected = [math_equivalent(a, r) for a, r in cases]
    assert expected == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert [in_thread(math_equivalent, a, r) for a, r in cases] == expected


def test_math_worker_survives_a_hang_and_a_crash(monkeypatch):
    assert in_thread(math_equivalent, "2", "2") == 1.0  # worker started
    worker = checks.DEFAULT_MATH_VERIFIER
    # A crashed worker is replaced transparently and the check still gets its answer.
    worker._proc.kill()
    worker._proc.wait()
    assert in_thread(math_equivalent, "3", r"\frac{6}{2}") == 1.0
    # Exponent towers make sympy compute forever; past the deadline the worker is killed.
    monkeypatch.setattr(checks, "MATH_DEADLINE_S", 0.2)
    assert in_thread(math_equivalent, "9^{9^{9}}", "1") == 0.0
    assert worker.pid is None
    monkeypatch.setattr(checks, "MATH_DEADLINE_S", 20.0)
    assert in_thread(math_equivalent, "0.5", "1/2") == 1.0


def test_math_worker_that_cannot_start_falls_back_in_process(monkeypatch):
    worker = checks.MathVerifier()
    monkeypatch.setattr(checks, "DEFAULT_MATH_VERIFIER", worker)
    monkeypatch.setattr(checks.sys, "executable", "/nonexistent/python")
    assert in_thread(math_equivalent, "1/2", "0.5") == 1.0
    assert worker._broken and worker.pid is None


def _check_in_forked_child() -> tuple[int | None, float | None]:
    return checks.DEFAULT_MATH_VERIFIER.pid, in_thread(math_equivalent, "1/2", "0.5")


def test_forked_child_does_not_share_the_parent_worker():
    assert in_thread(math_equivalent, "2", "2") == 1.0
    parent_worker = checks.DEFAULT_MATH_VERIFIER._proc
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply(_check_in_forked_child) == (None, 1.0)  # the parent's worker is not the child's
    assert checks.DEFAULT_MATH_VERIFIER._proc is parent_worker and parent_worker.poll() is None
    assert in_thread(math_equivalent, "3", "3") == 1.0


def test_exponent_tower_in_main_thread_is_stopped_by_timeout():
    assert threading.current_thread() is threading.main_thread()
    assert math_equivalent("9^{9^{9}}", "1") == 0.0


# ---------------------------------------------------------------- exact_match / token_f1


@pytest.mark.parametrize(("answer", "reference"), [
    ("  The  BEATLES!! ", "beatles"), ("an apple", "Apple."), ("Café", "CAFÉ"), ("ＡＢＣ", "abc"),
    ("1,234", "1234"), ("It's", "its"), ("New\tYork\n", "new york"), ("-5", "-5."),
])
def test_exact_match_normalises(answer, reference):
    assert exact_match(answer, reference) == 1.0


@pytest.mark.parametrize(("answer", "reference"), [
    ("3.5", "35"), ("-5", "5"), ("new york city", "new york"), ("the", "a"), ("", "x"), ("!!!", "?"),
])
def test_exact_match_rejects(answer, reference):
    assert exact_match(answer, reference) == 0.0


def test_exact_match_reference_list_none_and_huge():
    assert exact_match("fab four", ["The Beatles", "the Fab Four"]) == 1.0
    assert exact_match("stones", ["The Beatles", "the Fab Four"]) == 0.0
    assert exact_match(None, "x") == 0.0
    assert exact_match("x", None) is None
    assert exact_match("x", []) is None
    assert exact_match("", "") is None  # a blank reference is no reference
    assert exact_match("a" * MB, "a") == 0.0
    assert exact_match("ab " * (MB // 3), "AB " * (MB // 3)) == 1.0


def test_normalize_answer_keeps_numbers_apart():
    assert normalize_answer("3.5") != normalize_answer("35")
    assert normalize_answer("-1,234.5") == "-1234.5"
    assert normalize_answer("The U.S.A.") == "usa"


def test_token_f1_values():
    assert token_f1("the red house", "red brick house") == pytest.approx(0.8)
    assert token_f1("Red House", "the red house") == 1.0
    assert token_f1("blue", "red house") == 0.0
    assert token_f1("red", ["blue", "red house"]) == pytest.approx(2 / 3)
    assert token_f1(None, "x") == 0.0
    assert token_f1("the", "the") == 0.0  # only an article: nothing to match
    assert token_f1("x", None) is None


text_st = st.text(max_size=200)


@settings(max_examples=150, deadline=None)
@given(text_st, st.one_of(text_st, st.lists(text_st, max_size=3), st.none()))
def test_string_checkers_total_and_bounded(answer, reference):
    for fn in (exact_match, token_f1, numeric_close):
        v = fn(answer, reference)
        assert v is None or (0.0 <= v <= 1.0 and math.isfinite(v))


@settings(max_examples=150, deadline=None)
@given(text_st)
def test_token_f1_and_exact_match_agree_with_themselves(text):
    expected = None if not text.strip() else 1.0 if normalize_answer(text) else 0.0
    assert exact_match(text, text) == expected
    assert token_f1(text, text) == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="0123456789+-*/^{}()\\frac x.", max_size=30))
def test_math_equivalent_total_on_mathy_garbage(answer):
    assert math_equivalent(answer, "1/2") in (0.0, 1.0)


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize(("text", "value"), [
    ("1234", 1234), ("1,234", 1234), ("1,234,567.5", Fraction(2469135, 2)), ("$5", 5), ("-$5", -5),
    ("€ 5", 5), ("3/4", Fraction(3, 4)), ("1e3", 1000), ("1E-3", Fraction(1, 1000)), ("50%", 50),
    (r"50\%", 50), (r"\frac{3}{4}", Fraction(3, 4)), (r"\dfrac{-1}{2}", Fraction(-1, 2)), ("x = 5", 5),
    ("5 apples", 5), ("\u22123", -3), ("４２", 42), (".5", Fraction(1, 2)), ("½", Fraction(1, 2)),
    ("The answer is 7.", 7), ("1{,}000", 1000), (r"\$12", 12), (12, 12), (0.5, Fraction(1, 2)),
])
def test_parse_number_reads(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize("text", [
    "3 or 4", "1,2", "3-5", "1,2345", "2x", "5kg", "abc", "", "   ", "1/0", "1e99999", "9" * 500, None, True,
    float("nan"), float("inf"), "1 2", "x" * MB,
])
def test_parse_number_refuses(text):
    assert parse_number(text) is None


def test_numeric_close_tolerance_and_references():
    assert numeric_close("0.3333333", "1/3") == 1.0
    assert numeric_close("0.33", "1/3") == 0.0
    assert numeric_close("0.33", "1/3", rel_tol=0.05) == 1.0
    assert numeric_close("12", 13) == 0.0
    assert numeric_close("13.0", 13) == 1.0
    assert numeric_close("0", "1e-12") == 1.0  # within abs_tol
    assert numeric_close("1e500", "1e500") == 1.0  # beyond float range: exact
    assert numeric_close("1e500", "1.0000001e500") == 1.0
    assert numeric_close("1e500", "2e500") == 0.0
    assert numeric_close("5", ["five", "5.0"]) == 1.0
    assert numeric_close("50%", "0.5") == 0.0  # documented: a percentage is the number as written
    assert numeric_close("50%", "50") == 1.0


def test_numeric_close_not_applicable_and_bad_answers():
    assert numeric_close("42", "forty-two") is None
    assert numeric_close("42", None) is None
    assert numeric_close("42", []) is None
    assert numeric_close(None, "42") == 0.0
    assert numeric_close("", "42") == 0.0
    assert numeric_close("42 or 43", "42") == 0.0
    assert numeric_close(" ".join(["42"] * (MB // 3)), "42") == 0.0
    assert numeric_close("a" * MB + " 42", "42") == 1.0


# ---------------------------------------------------------------- format and JSON checks


def test_format_check_names_and_matches():
    think = format_check(r"^<think>.*</think>")
    assert think.__name__ == "format_think_think"
    assert think("<think>\nline\n</think>4") == 1.0  # DOTALL by default
    assert think("4 <think></think>") == 0.0
    assert think(None) == 0.0
    assert think("<think>" + "x" * MB + "</think>") == 1.0
    full = format_check(r"\d+", fullmatch=True, name="only_digits")
    assert full.__name__ == "only_digits"
    assert (full("123"), full("123 ")) == (1.0, 0.0)
    assert format_check(r"!!").__name__ == "format_regex"


def test_format_check_rejects_bad_pattern():
    with pytest.raises(ConfigError, match="invalid regular expression"):
        format_check("(unclosed")


def test_regex_format_plain():
    assert regex_format("Answer: 3", r"Answer:\s*\d") == 1.0
    assert regex_format("Answer: x", r"Answer:\s*\d") == 0.0
    assert regex_format(None, r".*") == 0.0


SCHEMA = {"title": "Weather report", "type": "object", "required": ["city", "temp"],
          "properties": {"city": {"type": "string"}, "temp": {"type": "number"}}, "additionalProperties": False}


def test_json_schema_check():
    check = json_schema_check(SCHEMA)
    assert check.__name__ == "json_schema_weather_report"
    assert json_schema_check({"type": "object"}).__name__ == "json_schema"
    assert json_schema_check(SCHEMA, name="weather").__name__ == "weather"
    assert check('{"city": "Zürich", "temp": -3.5}') == 1.0
    assert check('```json\n{"city": "Oslo", "temp": 1}\n```') == 1.0
    assert check('{"city": "Oslo"}') == 0.0
    assert check('{"city": "Oslo", "temp": "cold"}') == 0.0
    assert check('{"city": "Oslo", "temp": 1, "x": 0}') == 0.0
    assert check('["Oslo", 1]') == 0.0
    assert check("Oslo") == 0.0
    assert check("") == 0.0
    assert check(None) == 0.0
    assert check("[" * 100_000 + "]" * 100_000) == 0.0  # too deep for the JSON parser
    assert check('{"city": "' + "x" * MB + '", "temp": 1}') == 1.0


def test_json_schema_check_rejects_bad_schema():
    with pytest.raises(ConfigError, match="invalid JSON schema"):
        json_schema_check({"type": "no-such-type"})


# ---------------------------------------------------------------- group checkers


def test_majority_agreement():
    assert majority_agreement(["42", "42.", "41", None]) == [0.5, 0.5, 0.25, 0.0]
    assert majority_agreement(["The Answer", "answer", "!!!"]) == [2 / 3, 2 / 3, 0.0]
    assert majority_agreement([None, None]) == [0.0, 0.0]
    assert majority_agreement([]) == []
    assert majority_agreement(["0.5", "1/2"], key=lambda a: str(parse_number(a))) == [1.0, 1.0]


def test_majority_answer():
    assert majority_answer(["7", " 7 ", "8"]) == "7"
    assert majority_answer(["7", "8"]) is None
    assert majority_answer([None, ""]) is None
    assert majority_answer([]) is None


def test_shortest_correct_bonus():
    assert shortest_correct_bonus([1.0, 1.0, 1.0, 0.0], [100, 200, 300, 10]) == [1.0, 0.5, 0.0, 0.0]
    assert shortest_correct_bonus([1.0, 1.0], [5, 5]) == [1.0, 1.0]
    assert shortest_correct_bonus([0.0, 0.5], [5, 1]) == [0.0, 0.0]
    assert shortest_correct_bonus([1.2, 0.9], [50, 1], correct_at=1.0) == [1.0, 0.0]
    assert shortest_correct_bonus([], []) == []
    with pytest.raises(ValueError, match="2 rewards but 1 lengths"):
        shortest_correct_bonus([1.0, 1.0], [3])


# ---------------------------------------------------------------- with the rubric


def test_checkers_compose_in_a_rubric_by_parameter_name():
    rubric = Rubric([math_equivalent, numeric_close, (format_check(r"<think>.*</think>", name="think"), 0.2)],
                    group_funcs=[(majority_agreement, 0.0), (shortest_correct_bonus, 0.1)])
    rollouts = []
    for text, length in [(r"<think>a</think>\boxed{\frac{1}{2}}", 30), ("Answer: 0.5", 10),
                         ("Answer: 7", 5), (HIDDEN_IN_TOOL_CALL, 3)]:
        rollouts.append({"answer": extract_answer(text), "reference": "1/2", "completion": text, "length": length})
    scores = rubric.score_group(rollouts)
    assert set(scores[0].breakdown) == {"math_equivalent", "numeric_close", "think", "majority_agreement",
                                        "shortest_correct_bonus"}
    assert [s.breakdown["math_equivalent"] for s in scores] == [1.0, 1.0, 0.0, 0.0]
    assert [s.breakdown["numeric_close"] for s in scores] == [1.0, 1.0, 0.0, 0.0]
    assert [s.breakdown["majority_agreement"] for s in scores] == [0.25, 0.25, 0.25, 0.0]  # "1/2" vs "0.5"
    assert [s.breakdown["shortest_correct_bonus"] for s in scores] == [0.0, 1.0, 0.0, 0.0]
    assert [s.reward for s in scores] == pytest.approx([2.2, 2.1, 0.0, 0.0])
    assert all(s.error is None for s in scores)
