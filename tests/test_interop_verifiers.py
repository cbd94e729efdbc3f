"""verifiers (v1) tasksets run as toolgym envs, scored by their own task rewards."""

from __future__ import annotations

import json
import re

import pytest

import toolgym
from toolgym.envs.conformance import run_checks
from toolgym.envs.tools import tool
from toolgym.errors import ConfigError

try:
    from toolgym.envs.verifiers_adapter import VerifiersEnv, import_verifiers

    vf = import_verifiers()
except ConfigError as exc:  # optional dependency (dev extra)
    pytest.skip(f"verifiers is not installed: {exc}", allow_module_level=True)

from transformers import AutoTokenizer  # noqa: E402

from toolgym.rollouts.engines.fake import ScriptedEngine  # noqa: E402
from toolgym.rollouts.tiny import tiny_model_path  # noqa: E402
from toolgym.rollouts.worker import RolloutConfig, RolloutRequest, RolloutWorker  # noqa: E402


class AddData(vf.TaskData):
    answer: int = 0


class AddTask(vf.Task[AddData]):
    @vf.reward
    async def correct(self, task, trace) -> float:
        found = re.findall(r"Answer:\s*(-?\d+)\s*$", trace.last_reply)
        return float(len(found) == 1 and int(found[0]) == task.answer)

    @vf.metric
    async def tool_results(self, trace) -> float:
        return float(len(trace.tool_messages))


class AddTaskset(vf.Taskset[AddTask]):
    def load(self):
        for i in range(12):
            yield AddTask(AddData(id=f"add-{i}", prompt=f"What is {i} + {2 * i}? End with 'Answer: N'.",
                                  answer=3 * i))


class BrokenTask(AddTask):
    @vf.reward
    async def correct(self, task, trace) -> float:
        raise ValueError("grader crashed")


class BrokenTaskset(vf.Taskset[BrokenTask]):
    def load(self):
        yield BrokenTask(AddData(prompt="What is 1 + 1?", answer=2))


@tool(timeout=None)
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: First.
        b: Second.
    """
    return a + b


toolgym.register("test/VfAdd-v0", entry_point="toolgym.envs.verifiers_adapter:VerifiersEnv",
                 taskset=f"{__name__}:AddTaskset", tools=[add])


def answer(messages) -> str:
    a, b = map(int, re.findall(r"(\d+) \+ (\d+)", messages[-1]["content"])[0])
    return f"Answer: {a + b}"


def test_tasks_prompts_and_rewards_come_from_the_taskset():
    env = toolgym.make("test/VfAdd-v0").unwrapped
    obs, info = env.reset(options={"task_id": "add-4"})
    assert obs == [{"role": "user", "content": "What is 4 + 8? End with 'Answer: N'."}]
    assert env.state.task.answer == "12" and len(env.tasks) == 12
    call = json.dumps({"name": "add", "arguments": {"a": 4, "b": 8}})
    obs, *_ = env.step(f"<tool_call>{call}</tool_call>")
    assert obs[-1]["role"] == "tool" and obs[-1]["content"] == "12"
    _, reward, term, _, info = env.step("Answer: 12")
    assert term and reward == 1.0 and info["final_reward"] == 1.0
    assert info["rubric"] == {"verifiers_reward": 1.0, "correct": 1.0, "tool_results": 1.0}
    env.reset(options={"task_id": "add-4"})
    assert env.step("Answer: 13")[1] == 0.0


def test_a_crashing_task_reward_is_recorded_not_raised():
    env = VerifiersEnv(taskset=BrokenTaskset)
    env.reset(seed=0)
    _, reward, term, _, info = env.step("Answer: 2")
    assert term and reward == 0.0 and info["error"]["type"] == "VerifierError"
    assert "grader crashed" in info["error"]["message"]


def test_unsupported_configurations_are_refused():
    with pytest.raises(ConfigError, match="eval_taskset"):
        VerifiersEnv(taskset=AddTaskset, split="eval")
    with pytest.raises(ConfigError, match="not a verifiers Taskset"):
        VerifiersEnv(taskset="json:loads", taskset_kwargs={"s": "[]"})


def test_conformance_checks_pass():
    report = run_checks("test/VfAdd-v0")
    assert report.passed, {r.name: r.detail for r in report.results if not r.passed}


def test_rollout_worker_scores_with_the_task_rewards():
    tok = AutoTokenizer.from_pretrained(tiny_model_path())
    engine = ScriptedEngine(tok, lambda ids, chat, i: answer(chat.messages))
    worker = RolloutWorker(engine, lambda: toolgym.make("test/VfAdd-v0"), RolloutConfig(max_new_tokens=16))
    trajs = worker.run_sync([RolloutRequest({"task_index": i}, group_size=2) for i in range(3)])
    assert len(trajs) == 6
    for t in trajs:
        assert t.error is None and t.reward == 1.0 and t.rubric["correct"] == 1.0
