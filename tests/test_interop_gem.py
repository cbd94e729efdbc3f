"""Real GEM environments through the text-env wrapper (runs where gem-llm is installed)."""

from __future__ import annotations

import re

import pytest

import toolgym
from toolgym.envs.conformance import run_checks
from toolgym.envs.text_env import register_text_env

pytest.importorskip("gem", reason="gem-llm is not installed (it pins antlr4 4.13, which hydra-core 1.3 forbids)")

# GEM games pay -0.1 for a turn without a valid \boxed{} guess.
register_text_env("gem/GuessTheNumber-easy-v0", "gem:make", text_env_kwargs={"env_id": "game:GuessTheNumber-v0-easy"},
                  max_turns=6, reward_bounds=(-0.1, 1.0))


def bisect(messages) -> str:
    low, high = 1, 10
    for m in messages:
        for n, hint in re.findall(r"you guessed (\d+), and the target number is (higher|lower)", m["content"] or ""):
            low, high = (int(n) + 1, high) if hint == "higher" else (low, int(n) - 1)
    return f"My guess is \\boxed{{{(low + high) // 2}}}"


def test_guess_the_number_is_won_by_bisection_with_turn_rewards():
    env = toolgym.make("gem/GuessTheNumber-easy-v0").unwrapped
    for index in range(5):
        obs, _ = env.reset(options={"task_index": index})
        assert obs[-1]["content"].startswith("You are playing Guess The Number.")
        while True:
            obs, _, term, trunc, info = env.step(bisect(obs))
            if term or trunc:
                break
        assert term and env.state.turn_rewards[-1] == 1.0 and info["rubric"]["episode_return"] == 1.0


@pytest.mark.parametrize("mode", ["turn", "final"])
def test_conformance_checks_pass(mode):
    report = run_checks("gem/GuessTheNumber-easy-v0", reward_mode=mode)
    assert report.passed, {r.name: r.detail for r in report.results if not r.passed}
