"""Text environments (GEM-style reset/step on strings) wrapped as toolgym environments."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from transformers import AutoTokenizer

import toolgym
from toolgym.envs.conformance import run_checks
from toolgym.envs.task import Task
from toolgym.envs.text_env import TextEnv, make_text_env, register_text_env
from toolgym.envs.tools import tool
from toolgym.errors import ConfigError, EnvError
from toolgym.rollouts.engines.fake import ScriptedEngine
from toolgym.rollouts.tiny import tiny_model_path
from toolgym.rollouts.worker import RolloutConfig, RolloutRequest, RolloutWorker

BOXED = re.compile(r"\\boxed\{(\d+)\}")
HERE = __name__  # the toy envs' import path for string entry points


def secret(seed: int, low: int = 1, high: int = 20) -> int:
    return random.Random(seed).randint(low, high)


class GuessEnv:
    """GEM-style Guess the Number: hints each turn, reward 1 for the right number, own guess limit.

    ``<parity/>`` is the env's own tool (like GEM's ``<python>`` tags): it answers without using a guess.
    """

    built = 0

    def __init__(self, high: int = 20, max_guesses: int = 6):
        GuessEnv.built += 1
        self.high, self.max_guesses = high, max_guesses
        self.actions: list[str] = []

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self.target, self.guesses, self.actions = secret(seed or 0, 1, self.high), 0, []
        return f"Guess my number between 1 and {self.high}. Write \\boxed{{N}}.", {"high": self.high}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self.actions.append(action)
        if "<parity/>" in action:
            return f"The number is {'even' if self.target % 2 == 0 else 'odd'}.", 0.0, False, False, {}
        if action.strip() == "boom":
            raise RuntimeError("the game crashed")
        found = BOXED.findall(action)
        if not found:
            return "No valid guess. Write \\boxed{N}.", 0.0, False, False, {"valid": False}
        self.guesses += 1
        guess = int(found[-1])
        if guess == self.target:
            return "Correct!", 1.0, True, False, {"valid": True}
        hint = "higher" if guess < self.target else "lower"
        return f"{guess} is wrong; go {hint}.", 0.0, False, self.guesses >= self.max_guesses, {"valid": True}


class LenientGuessEnv(GuessEnv):
    """A hackable variant: any number anywhere in the text counts as a correct guess."""

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if str(self.target) in re.findall(r"\d+", action):
            return "Correct!", 1.0, True, False, {}
        return "Wrong.", 0.0, False, False, {}


class QAEnv:
    """A one-shot QA env: one question, one answer, done."""

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        rng = random.Random(seed)
        self.a, self.b = rng.randint(10, 99), rng.randint(10, 99)
        return f"What is {self.a} + {self.b}? Answer as \\boxed{{N}}.", {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        found = BOXED.findall(action)
        # Like GEM's single-turn envs, the episode ends with both flags set.
        return "", float(bool(found) and int(found[-1]) == self.a + self.b), True, True, {}


class BrokenResetEnv(GuessEnv):
    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        raise OSError("dataset missing")


def guess_demo(task: Task) -> list[str]:
    """Oracle turns: the secret is a function of the task's seed."""
    return [f"\\boxed{{{secret(task.metadata['seed'])}}}"]


def qa_demo(task: Task) -> list[str]:
    env = QAEnv()
    env.reset(seed=task.metadata["seed"])
    return [f"The sum is \\boxed{{{env.a + env.b}}}."]


def bisect_turn(messages: list[dict[str, Any]], high: int = 20) -> str:
    """A policy that finds the number from the hints in the chat."""
    low, top = 1, high
    for m in messages:
        hint = re.match(r"(\d+) is wrong; go (higher|lower)", str(m.get("content") or ""))
        if hint:
            n = int(hint.group(1))
            low, top = (n + 1, top) if hint.group(2) == "higher" else (low, n - 1)
    return f"I guess \\boxed{{{(low + top) // 2}}}"


def play(env: TextEnv, policy=bisect_turn) -> tuple[list[float], bool, bool, dict[str, Any]]:
    obs, rewards = list(env.state.messages), []
    while True:
        obs, reward, term, trunc, info = env.step(policy(obs))
        rewards.append(reward)
        if term or trunc:
            return rewards, term, trunc, info


register_text_env("test/Guess-v0", f"{HERE}:GuessEnv", demonstration=f"{HERE}:guess_demo", max_turns=8)
register_text_env("test/QA-v0", f"{HERE}:QAEnv", demonstration=f"{HERE}:qa_demo", reward_mode="final", max_turns=1)
register_text_env("test/Lenient-v0", f"{HERE}:LenientGuessEnv", reward_mode="final", max_turns=3)


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(tiny_model_path())


# ---- rewards and episode end --------------------------------------------------------------
def test_turn_mode_pays_the_wrapped_rewards_turn_by_turn():
    env = toolgym.make("test/Guess-v0").unwrapped
    obs, info = env.reset(options={"task_index": 3})
    target = secret(info["seed"])
    assert obs[-1] == {"role": "user", "content": "Guess my number between 1 and 20. Write \\boxed{N}."}
    assert env.state.task.prompt == obs[-1]["content"] and info["env_info"] == {"high": 20}
    rewards, term, trunc, info = play(env)
    assert term and not trunc and rewards[-1] == 1.0 and sum(rewards) == 1.0
    assert env.state.turn_rewards == rewards and info["env_reward"] == 1.0
    assert info["final_reward"] == 0.0 and info["rubric"]["episode_return"] == 1.0
    assert env.reward_bounds == (0.0, 0.0) and env.return_bounds == (0.0, 1.0)
    assert env.wrapped.actions[-1] == f"I guess \\boxed{{{target}}}"
    assert env.state.messages[-1] == {"role": "user", "content": "Correct!"}


def test_final_mode_pays_the_return_once_at_the_end():
    env = toolgym.make("test/Guess-v0", reward_mode="final").unwrapped
    assert env.reward_bounds == env.return_bounds == (0.0, 1.0)
    env.reset(options={"task_index": 3})
    rewards, term, _, info = play(env)
    assert term and rewards[:-1] == [0.0] * (len(rewards) - 1) and rewards[-1] == 1.0
    assert info["final_reward"] == 1.0 and info["turn_reward"] == 0.0


def test_wrapped_truncation_and_toolgym_budgets_map_through():
    env = make_text_env(GuessEnv, text_env_kwargs={"max_guesses": 2}, max_turns=8)
    env.reset(options={"task_index": 0})
    wrong = 1 if secret(env.state.task.metadata["seed"]) != 1 else 2
    _, _, term, trunc, _ = env.step(f"\\boxed{{{wrong}}}")
    assert not (term or trunc)
    _, reward, term, trunc, info = env.step(f"\\boxed{{{wrong}}}")
    assert trunc and not term and info["truncated_reason"] == "env" and reward == 0.0

    env = make_text_env(GuessEnv, max_turns=2)
    env.reset(options={"task_index": 0})
    env.step("thinking...")
    _, _, term, trunc, info = env.step("still thinking")
    assert trunc and not term and info["truncated_reason"] == "max_turns" and env.state.turn == 2
    with pytest.raises(EnvError, match="episode is over"):
        env.step("more")


def test_one_shot_qa_ends_after_one_turn():
    env = toolgym.make("test/QA-v0").unwrapped
    _, info = env.reset(seed=5)
    right = qa_demo(env.state.task)[0]
    _, reward, term, trunc, info = env.step(right)
    assert term and not trunc and reward == 1.0 and info["final_reward"] == 1.0
    assert info["env_terminated"] and info["env_truncated"] and info["truncated_reason"] is None
    env.reset(seed=5)
    assert env.step("\\boxed{0}")[1] == 0.0


# ---- tasks and determinism ----------------------------------------------------------------
def test_tasks_are_seeds_and_episodes_repeat():
    a, b = make_text_env(GuessEnv), make_text_env(GuessEnv)
    obs_a, info_a = a.reset(seed=11)
    obs_b, info_b = b.reset(seed=11)
    assert obs_a == obs_b and info_a["task_id"] == info_b["task_id"] and info_a["seed"] == info_b["seed"]
    assert play(a) == play(b)
    _, info = a.reset(options={"task_id": "train-42"})
    assert info["seed"] == 42 and a.wrapped.target == secret(42)
    ev = make_text_env(GuessEnv, split="eval", num_tasks=10)
    _, info = ev.reset(options={"task_index": 4})
    assert info["task_id"] == "eval-4" and info["seed"] == 1_000_000_004
    with pytest.raises(EnvError, match="no task"):
        ev.reset(options={"task_id": "train-4"})


# ---- tool calls -----------------------------------------------------------------------------
def test_wrapped_env_tags_pass_through_and_toolgym_calls_are_answered_by_toolgym():
    env = make_text_env(GuessEnv)
    env.reset(options={"task_index": 1})
    obs, *_ = env.step("Let me check <parity/> first.")
    assert env.wrapped.actions == ["Let me check <parity/> first."]
    assert obs[-1]["role"] == "user" and obs[-1]["content"].startswith("The number is")
    obs, _, term, trunc, info = env.step('<tool_call>{"name": "lookup", "arguments": {}}</tool_call>')
    assert obs[-1]["role"] == "tool" and "unknown tool 'lookup'" in obs[-1]["content"]
    assert info["malformed_calls"] == 1 and len(env.wrapped.actions) == 1 and not (term or trunc)

    passthrough = make_text_env(GuessEnv, intercept_tool_calls=False)
    passthrough.reset(options={"task_index": 1})
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c0", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]}
    passthrough.step(call)
    assert passthrough.wrapped.actions == ['<tool_call>{"name": "lookup", "arguments": "{}"}</tool_call>']


@tool(timeout=None)
def double(n: int) -> int:
    """Double a number.

    Args:
        n: The number.
    """
    return 2 * n


def test_toolgym_tools_work_beside_the_wrapped_env():
    env = make_text_env(GuessEnv, tools=[double], observation_role="tool")
    _, info = env.reset(options={"task_index": 2})
    assert [t["function"]["name"] for t in info["tools"]] == ["double"]
    obs, *_ = env.step('<tool_call>{"name": "double", "arguments": {"n": 4}}</tool_call>')
    assert obs[-1]["role"] == "tool" and obs[-1]["content"] == "8" and env.wrapped.actions == []
    obs, *_ = env.step("\\boxed{0}")
    assert obs[-1]["role"] == "tool" and obs[-1]["name"] == "environment"


# ---- failures -----------------------------------------------------------------------------
def test_exception_in_wrapped_step_is_recorded_and_the_env_recovers():
    env = make_text_env(GuessEnv)
    env.reset(options={"task_index": 0})
    built = GuessEnv.built
    _, reward, term, trunc, info = env.step("boom")
    assert trunc and not term and reward == 0.0 and info["truncated_reason"] == "env_error"
    assert info["error"]["kind"] == "env" and info["error"]["type"] == "EnvError"
    assert "RuntimeError: the game crashed" in info["error"]["message"]
    obs, _ = env.reset(options={"task_index": 0})
    assert GuessEnv.built == built + 1 and obs[-1]["content"].startswith("Guess my number")
    assert play(env)[1]


def test_construction_and_reset_failures_are_typed():
    with pytest.raises(EnvError, match="failed to reset with seed 0.*dataset missing"):
        make_text_env(BrokenResetEnv).reset(options={"task_index": 0})
    with pytest.raises(EnvError, match="could not build"):
        make_text_env(GuessEnv, text_env_kwargs={"no_such_arg": 1})
    with pytest.raises(ConfigError, match="cannot import"):
        make_text_env("no_such_module_xyz:Env")
    with pytest.raises(ConfigError, match="reward_mode"):
        make_text_env(GuessEnv, reward_mode="sometimes")
    with pytest.raises(EnvError, match="no reset"):
        make_text_env(dict)


# ---- conformance ----------------------------------------------------------------------------
@pytest.mark.parametrize(("env_id", "kwargs"), [("test/Guess-v0", {}), ("test/Guess-v0", {"reward_mode": "final"}),
                                              ("test/QA-v0", {})])
def test_conformance_checks_pass(env_id, kwargs):
    report = run_checks(env_id, **kwargs)
    failed = {r.name: r.detail for r in report.results if not r.passed}
    assert report.passed, failed
    details = {r.name: r.detail for r in report.results}
    assert "scored the maximum" in details["oracle_demonstrations"]
    if kwargs or env_id == "test/QA-v0":  # the final reward is the wrapped env's: the probes mean something
        assert "<= 0.5" in details["reward_hacking_probes"]


def test_hacking_probes_catch_a_lenient_wrapped_env():
    report = run_checks("test/Lenient-v0")
    probes = next(r for r in report.results if r.name == "reward_hacking_probes")
    assert not probes.passed and "very long answer" in probes.detail


# ---- rollouts -----------------------------------------------------------------------------
def test_rollout_worker_runs_wrapped_episodes(tok):
    def script(prompt_ids, chat, index):
        return "boom" if "between 1 and 20" in chat.messages[-1]["content"] and crash["on"] else bisect_turn(
            chat.messages)

    crash = {"on": False}
    worker = RolloutWorker(ScriptedEngine(tok, script), lambda: toolgym.make("test/Guess-v0"),
                           RolloutConfig(max_new_tokens=32))
    trajs = worker.run_sync([RolloutRequest({"task_index": i}, group_size=2) for i in range(3)])
    assert [t.task_id for t in trajs] == ["train-0", "train-0", "train-1", "train-1", "train-2", "train-2"]
    for t in trajs:
        assert t.error is None and t.terminated and t.reward == 1.0 and t.turn_rewards[-1] == 1.0
        assert t.rubric == {"episode_return": 1.0} and t.env_id == "test/Guess-v0"
        assert t.messages[-1] == {"role": "user", "content": "Correct!"}
    crash["on"] = True
    [bad] = worker.run_sync([RolloutRequest({"task_index": 5})])
    assert bad.error is not None and bad.error.type == "EnvError" and bad.truncated_reason == "env_error"
    crash["on"] = False
    [good] = worker.run_sync([RolloutRequest({"task_index": 5})])
    assert good.error is None and good.reward == 1.0
