"""The arithmetic pack: its env passes the conformance suite and its calculator stays a calculator."""

from __future__ import annotations

import pytest
from toolgym_arithmetic import PACK, ArithmeticEnv, calculator

import toolgym
from toolgym.envs.conformance import run_checks


def test_registered_by_this_pack() -> None:
    assert toolgym.spec("toolgym/Arithmetic-v0").pack == PACK == "toolgym-arithmetic"


@pytest.mark.parametrize("difficulty", [1, 2])
def test_conformance_including_reward_hacking_probes(difficulty: int) -> None:
    report = run_checks("toolgym/Arithmetic-v0", difficulty=difficulty)
    assert report.passed, [(r.name, r.detail) for r in report.results if not r.passed]
    assert {"reward_hacking_probes", "oracle_demonstrations", "picklable"} <= {r.name for r in report.results}


def test_splits_share_no_problem() -> None:
    train, evals = ArithmeticEnv(split="train"), ArithmeticEnv(split="eval")
    train_prompts = {train.tasks[i].prompt for i in range(len(train.tasks))}
    assert not train_prompts & {evals.tasks[i].prompt for i in range(len(evals.tasks))}


def test_calculator_refuses_what_is_not_arithmetic() -> None:
    assert calculator.call_sync({"expression": "(2 + 3) * 4 / 8"}, {}).content == "2.5"
    for bad in ["__import__('os').system('true')", "open('/etc/passwd')", "9**9**9", "1/0", "x" * 600, "[1, 2]"]:
        result = calculator.call_sync({"expression": bad}, {})
        assert not result.ok and result.content.startswith("Error"), bad


@pytest.mark.parametrize("difficulty, kinds", [(1, {"+", "-", "*"}), (2, {"2 steps", "3 steps", "4 steps"})])
def test_tasks_carry_a_kind_for_the_curriculum(difficulty: int, kinds: set[str]) -> None:
    tasks = ArithmeticEnv(difficulty=difficulty).tasks
    seen = {tasks[i].metadata["kind"] for i in range(200)}
    assert seen == kinds
    if difficulty == 1:  # the kind is the problem's operator
        assert all(f" {tasks[i].metadata['kind']} " in tasks[i].prompt for i in range(50))
