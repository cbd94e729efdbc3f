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
