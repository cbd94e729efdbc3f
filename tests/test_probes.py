"""Reward-hacking probes: a sound verifier passes them, hackable ones are caught."""

from __future__ import annotations

import pytest

import toolgym
from toolgym.envs import ListTasks, Task, ToolEnv, tool
from toolgym.envs.conformance import run_checks
from toolgym.verifiers import Rubric, exact_match


@tool(timeout=None)
def lookup(key: str) -> str:
    """Look a key up.

    Args:
        key: The key.
    """
    return {"alpha": "seven"}.get(key, "none")


def reference_anywhere(completion, reference) -> float:
    """Hackable: any completion that mentions the reference scores."""
    return float(reference in completion)


def any_answer(answer) -> float:
    """Hackable: rewards the format, not the content."""
    return float(answer is not None)


class ProbeEnv(ToolEnv):
    verifier = staticmethod(exact_match)

    def load_tasks(self, split):
        return ListTasks([Task(id=str(i), prompt=f"What is alpha, case {i}?", answer="seven") for i in range(3)])

    def make_tools(self):
        return [lookup]

    def make_rubric(self):
        return Rubric([self.verifier])

    def demonstration(self, task):
        return [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": "Answer: seven"}]


class SubstringEnv(ProbeEnv):
    verifier = staticmethod(reference_anywhere)


class FormatEnv(ProbeEnv):
    verifier = staticmethod(any_answer)


@pytest.mark.parametrize("cls, sound", [(ProbeEnv, True), (SubstringEnv, False), (FormatEnv, False)])
def test_probes_separate_sound_from_hackable_verifiers(cls, sound):
    env_id = f"tests/{cls.__name__}-v0"
    toolgym.register(env_id, entry_point=f"{__name__}:{cls.__name__}")
    results = {r.name: r for r in run_checks(env_id).results}
    assert results["oracle_demonstrations"].passed  # the demonstration earns full reward either way
    assert results["reward_hacking_probes"].passed is sound, results["reward_hacking_probes"].detail
    if not sound:
        assert "scored 1" in results["reward_hacking_probes"].detail


class ClosureToolEnv(ProbeEnv):
    """Its tool is a closure: fine in one process, but it cannot be sent to another."""

    def make_tools(self):
        table = {"alpha": "seven"}

        def local_lookup(key: str) -> str:
            """Look a key up.

            Args:
                key: The key.
            """
            return table.get(key, "none")

        return [local_lookup]


def test_pickling_check_catches_an_env_that_cannot_cross_processes():
    toolgym.register("tests/ClosureToolEnv-v0", entry_point=f"{__name__}:ClosureToolEnv")
    results = {r.name: r for r in run_checks("tests/ClosureToolEnv-v0").results}
    assert not results["picklable"].passed and "does not pickle" in results["picklable"].detail
    toolgym.register("tests/PicklableProbeEnv-v0", entry_point=f"{__name__}:ProbeEnv")
    assert {r.name: r for r in run_checks("tests/PicklableProbeEnv-v0").results}["picklable"].passed


def test_a_pickled_env_keeps_its_tool_settings_and_leaves_the_shared_tool_alone():
    import pickle

    env = ProbeEnv(tool_timeout=2.5)
    env.reset(seed=0)
    copy = pickle.loads(pickle.dumps(env))
    assert copy.state is None and copy.tools["lookup"].timeout is None  # timeout-less tools stay timeout-less
    env.tools["lookup"].max_result_chars = 7
    assert lookup.max_result_chars == 16_000 and copy.tools["lookup"].max_result_chars == 16_000
    copy.reset(seed=0)
    obs, *_ = copy.step('<tool_call>{"name": "lookup", "arguments": {"key": "alpha"}}</tool_call>')
    assert obs[-1]["content"] == "seven"
