"""The conformance checks added for ``toolgym check``: each catches a broken env with a message
that says how to fix it, and passes the fixed env.

Checks: ``tool_parameters`` (types and descriptions), ``hidden_arguments`` (injected arguments
kept out of the schema), ``determinism_across_instances``, ``demonstration_length`` (against
``max_new_tokens``) and the diagnosis ``picklable`` gives; plus ``format_check`` results pickling.
"""

from __future__ import annotations

import pickle
import random
import threading
from typing import Any

import toolgym
from toolgym.envs import ListTasks, Task, Tool, ToolEnv, tool
from toolgym.envs.conformance import (
    CheckResult,
    find_unpicklable,
    pickle_advice,
    run_checks,
    token_counter,
    turn_text,
)
from toolgym.verifiers import Rubric, exact_match, format_check

PROMPTS = [f"What is alpha, case {i}?" for i in range(6)]


def check(env_cls: type, name: str, **kwargs: Any) -> CheckResult:
    """Register ``env_cls`` under its own id and run the checks; the result of check ``name``."""
    env_id = f"tests/{env_cls.__name__}-v0"
    toolgym.register(env_id, entry_point=f"{__name__}:{env_cls.__name__}")
    results = {r.name: r for r in run_checks(env_id, **kwargs).results}
    return results[name]


@tool(timeout=None)
def lookup(key: str) -> str:
    """Look a key up.

    Args:
        key: The key.
    """
    return {"alpha": "seven"}.get(key, "none")


class GoodEnv(ToolEnv):
    """A sound env: every new check passes it."""

    def load_tasks(self, split: str) -> ListTasks:
        return ListTasks([Task(id=str(i), prompt=p, answer="seven") for i, p in enumerate(PROMPTS)])

    def make_tools(self) -> list[Any]:
        return [lookup]

    def make_rubric(self) -> Rubric:
        return Rubric([exact_match])

    def demonstration(self, task: Task) -> list[dict[str, Any]]:
        call = '<tool_call>{"name": "lookup", "arguments": {"key": "alpha"}}</tool_call>'
        return [{"role": "user", "content": task.prompt},
                {"role": "assistant", "content": call},
                {"role": "tool", "content": "seven"},
                {"role": "assistant", "content": "Answer: seven"}]


def test_the_sound_env_passes_every_check() -> None:
    toolgym.register("tests/GoodEnv-v0", entry_point=f"{__name__}:GoodEnv")
    report = run_checks("tests/GoodEnv-v0", max_new_tokens=256)
    assert report.passed, [(r.name, r.detail) for r in report.results if not r.passed]
    names = {r.name for r in report.results}
    assert {"tool_parameters", "hidden_arguments", "determinism_across_instances",
            "demonstration_length", "picklable"} <= names


# ---- tool_parameters ------------------------------------------------------------------------


@tool(timeout=None)
def vague(key, limit: int = 3) -> str:
    """Look a key up."""
    return "none"


class VagueToolEnv(GoodEnv):
    def make_tools(self) -> list[Any]:
        return [lookup, vague]


def test_tool_parameters_without_type_or_description_fail_with_the_fix() -> None:
    result = check(VagueToolEnv, "tool_parameters")
    assert not result.passed
    assert "tool 'vague' parameter 'key' has no type: annotate it" in result.detail
    assert "`key: str`" in result.detail
    assert "tool 'vague' parameter 'key' has no description" in result.detail
    assert "tool 'vague' parameter 'limit' has no description" in result.detail
    assert "under `Args:` as `limit: What it is.`" in result.detail
    assert "'limit' has no type" not in result.detail  # annotated: only its description is missing
    assert "'lookup'" not in result.detail
    assert check(GoodEnv, "tool_parameters").passed


# ---- hidden_arguments -----------------------------------------------------------------------


def peek(state: Any, key: str) -> str:
    """Read the episode's turn count.

    Args:
        state: The episode.
        key: Ignored.
    """
    return str(state.turn)


@tool(timeout=None, hidden=("state",))
def hidden_peek(state: Any, key: str) -> str:
    """Read the episode's turn count.

    Args:
        key: Ignored.
    """
    return str(state.turn)


@tool(timeout=None, hidden=("database",))
def query(database: Any, key: str) -> str:
    """Query the database.

    Args:
        key: The key.
    """
    return str(database.get(key))


class LeakyStateEnv(GoodEnv):
    def make_tools(self) -> list[Any]:
        return [lookup, peek]  # a plain function: its `state` parameter reaches the schema


class HiddenStateEnv(GoodEnv):
    def make_tools(self) -> list[Any]:
        return [lookup, hidden_peek]


class MissingResourceEnv(GoodEnv):
    def make_tools(self) -> list[Any]:
        return [lookup, query]


class ResourceEnv(MissingResourceEnv):
    def setup_episode(self, state: Any) -> None:
        state.resources["database"] = {"alpha": "seven"}


def test_an_injected_argument_in_the_schema_fails_with_how_to_hide_it() -> None:
    result = check(LeakyStateEnv, "hidden_arguments")
    assert not result.passed
    assert "tool 'peek' shows the injected argument 'state' to the model" in result.detail
    assert "@tool(hidden=('state',))" in result.detail
    assert "Tool.from_function(fn, hidden=('state',))" in result.detail
    fixed = check(HiddenStateEnv, "hidden_arguments")
    assert fixed.passed and "hidden arguments state" in fixed.detail


def test_a_hidden_argument_the_env_does_not_provide_fails() -> None:
    result = check(MissingResourceEnv, "hidden_arguments")
    assert not result.passed
    assert "tool 'query' hides 'database', but the env provides only" in result.detail
    assert "state.resources['database'] in setup_episode()" in result.detail
    assert check(ResourceEnv, "hidden_arguments").passed


# ---- determinism_across_instances ------------------------------------------------------------


MANY = 1000  # tasks: two independent shuffles give the same task for a seed with chance 1/1000


class FreshSeedEnv(GoodEnv):
    """Shuffles its tasks with a fresh random seed per instance: stable within one, not across two."""

    def load_tasks(self, split: str) -> ListTasks:
        tasks = [Task(id=str(i), prompt=f"What is alpha, case {i}?", answer="seven") for i in range(MANY)]
        random.Random().shuffle(tasks)  # seeded from os.urandom: each instance has its own order
        return ListTasks(tasks)


class FixedSeedEnv(GoodEnv):
    def load_tasks(self, split: str) -> ListTasks:
        tasks = [Task(id=str(i), prompt=f"What is alpha, case {i}?", answer="seven") for i in range(MANY)]
        random.Random(0).shuffle(tasks)  # a fixed seed: every instance has the same order
        return ListTasks(tasks)


def test_task_order_drawn_per_instance_fails_across_instances() -> None:
    toolgym.register("tests/FreshSeedEnv-v0", entry_point=f"{__name__}:FreshSeedEnv")
    results = {r.name: r for r in run_checks("tests/FreshSeedEnv-v0").results}
    assert results["seeded_determinism"].passed  # one instance alone cannot tell
    result = results["determinism_across_instances"]
    assert not result.passed
    assert "two instances made with make('tests/FreshSeedEnv-v0') gave tasks" in result.detail
    assert "for reset(seed=0)" in result.detail
    shown = result.detail[:300]  # what `toolgym check` prints of a detail
    assert "Derive the tasks and their order from the reset seed or a fixed seed" in shown
    assert check(FixedSeedEnv, "determinism_across_instances").passed


# ---- demonstration_length --------------------------------------------------------------------


LONG_ANSWER = "Because " * 40 + "Answer: seven"


class LongDemoEnv(GoodEnv):
    def demonstration(self, task: Task) -> list[dict[str, Any]]:
        return [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": LONG_ANSWER}]


class WordTokenizer:
    """One token per whitespace-separated word: makes the counts exact in the test."""

    name_or_path = "words"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert add_special_tokens is False  # a turn's tokens, without the tokenizer's BOS
        return list(range(len(text.split())))


def test_demonstrations_longer_than_max_new_tokens_fail_with_task_turn_and_excess() -> None:
    needed = len(LONG_ANSWER.encode()) + 1  # bytes, plus the end-of-turn token
    result = check(LongDemoEnv, "demonstration_length", max_new_tokens=64)
    assert not result.passed
    assert f"task '0' turn 1 needs {needed} ({needed - 64} over)" in result.detail
    assert "counted as UTF-8 bytes, an upper bound" in result.detail
    shown = result.detail[:300]  # what `toolgym check` prints of a detail
    assert "raise rollout.max_new_tokens" in shown and "conf/env/NAME.yaml" in shown
    assert f"to at least {needed}" in result.detail and "and 1 more" in result.detail  # 6 tasks, 5 listed
    assert check(LongDemoEnv, "demonstration_length", max_new_tokens=needed).passed


def test_demonstration_length_counts_with_a_given_tokenizer() -> None:
    words = len(LONG_ANSWER.split()) + 1
    result = check(LongDemoEnv, "demonstration_length", max_new_tokens=words - 1, tokenizer=WordTokenizer())
    assert not result.passed and f"needs {words} (1 over)" in result.detail
    assert "counted with tokenizer words" in result.detail
    assert check(LongDemoEnv, "demonstration_length", max_new_tokens=words, tokenizer=WordTokenizer()).passed


def test_without_a_limit_the_longest_turn_is_reported_not_judged() -> None:
    result = check(LongDemoEnv, "demonstration_length")
    assert result.passed and "longest demonstration turn" in result.detail and "not compared" in result.detail


def test_structured_tool_calls_are_counted_as_the_model_writes_them() -> None:
    message = {"role": "assistant", "content": None,
               "tool_calls": [{"id": "c", "type": "function", "function": {"name": "lookup",
                                                                           "arguments": {"key": "alpha"}}}]}
    expected = '<tool_call>\n{"name": "lookup", "arguments": {"key": "alpha"}}\n</tool_call>'
    assert turn_text(message) == expected
    count, _ = token_counter()
    assert count("é") == 2  # bytes, not characters


# ---- picklable: the real reason --------------------------------------------------------------


class LambdaRubricEnv(GoodEnv):
    def make_rubric(self) -> Rubric:
        return Rubric([(lambda answer, reference: float(answer == reference))])


class LocalRubricEnv(GoodEnv):
    def make_rubric(self) -> Rubric:
        def correct(answer: str | None, reference: str) -> float:
            return float(answer == reference)

        return Rubric([exact_match, correct])


class Counter:
    """Counts lookups; its tool is a bound method. The method is fine to pickle, the lock is not."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0

    def lookup(self, key: str) -> str:
        """Look a key up, counting calls.

        Args:
            key: The key.
        """
        with self.lock:
            self.calls += 1
        return "seven" if key == "alpha" else "none"


class LockedToolEnv(GoodEnv):
    def make_tools(self) -> list[Any]:
        return [lookup, Tool.from_function(Counter().lookup, name="counting_lookup", timeout=None)]


def renamed_factory() -> Any:
    def inner(answer: str | None) -> float:
        return float(answer is not None)

    inner.__qualname__ = inner.__name__ = "has_answer"  # what a naming factory does: pickle then looks it up
    return inner


class FormatRubricEnv(GoodEnv):
    def make_rubric(self) -> Rubric:
        return Rubric([exact_match, (format_check(r"Answer:", name="answer_line"), 0.0)])


def test_a_lambda_reward_function_is_named_with_its_path_and_reason() -> None:
    result = check(LambdaRubricEnv, "picklable")
    assert not result.passed and "the env does not pickle" in result.detail
    assert "env.rubric.funcs[0].fn: it is a lambda" in result.detail and "(function " in result.detail
    shown = result.detail[:300]
    assert "it is a lambda, which pickle cannot find by name: make it a module-level def" in shown
    assert "Can't pickle local object" in result.detail


def test_a_local_reward_function_is_told_apart_from_module_level_ones() -> None:
    result = check(LocalRubricEnv, "picklable")
    assert not result.passed
    assert "env.rubric.funcs[1].fn: it is defined inside a function" in result.detail
    assert "env.rubric.funcs[0]" not in result.detail
    assert "Can't pickle local object" in result.detail and "it is defined inside a function" in result.detail


def test_a_lock_inside_a_module_level_tool_is_the_reason_not_the_tool() -> None:
    result = check(LockedToolEnv, "picklable")
    assert not result.passed
    assert "env.tools['counting_lookup'].fn.__self__.lock: a lock" in result.detail
    assert "(a _thread.lock object; TypeError" in result.detail
    assert "cannot pickle '_thread.lock' object" in result.detail
    assert "drop it in __getstate__" in result.detail
    assert "define tools, rubric functions" not in result.detail  # the old advice, wrong here


def test_a_renamed_function_gets_the_lookup_explanation() -> None:
    fn = renamed_factory()
    path, part, exc = find_unpicklable({"funcs": [fn]}, "rubric")
    assert path == "rubric['funcs'][0]" and part is fn
    advice = pickle_advice(part, exc)
    assert "pickle looks it up as" in advice and ".has_answer, which does not exist" in advice
    assert find_unpicklable({"funcs": [exact_match]}) is None


def test_format_check_results_pickle_and_keep_their_behaviour() -> None:
    think = format_check(r"^<think>.*</think>")
    copy = pickle.loads(pickle.dumps(think))
    assert copy.__name__ == think.__name__ == "format_think_think"
    for text in ["<think>\nline\n</think>4", "4 <think></think>", None]:
        assert copy(text) == think(text)
    full = pickle.loads(pickle.dumps(format_check(r"\d+", fullmatch=True, name="only_digits")))
    assert (full("123"), full("123 "), full.__name__) == (1.0, 0.0, "only_digits")
    score = Rubric([(think, 1.0)]).score(completion="<think>x</think>")
    assert score.breakdown == {"format_think_think": 1.0}
    assert check(FormatRubricEnv, "picklable").passed
