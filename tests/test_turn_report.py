"""The typed turn record: one pipeline builds it, ``info`` is derived from it, the worker reads it."""

from __future__ import annotations

import json

import pytest
from toolgym_python_code import PythonCodeEnv
from transformers import AutoTokenizer

from toolgym.envs.base import ToolEnv
from toolgym.envs.report import ToolOutcome, TurnReport
from toolgym.envs.task import ListTasks, Task
from toolgym.envs.tools import tool
from toolgym.rollouts.engines.fake import ScriptedEngine
from toolgym.rollouts.tiny import tiny_model_path
from toolgym.rollouts.worker import RolloutRequest, RolloutWorker
from toolgym.sandboxes import open_sandbox_pool
from toolgym.sandboxes.testing import require_docker, small_config
from toolgym.verifiers.rubric import Rubric


def _call(name: str, **arguments: object) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


@tool(timeout=None)
def flaky(x: int) -> str:
    """Fail on odd numbers.

    Args:
        x: A number.
    """
    if x % 2:
        raise ValueError("odd")
    return str(x)


def exact(answer: str | None, reference: str) -> float:
    return float(answer == reference)


class Flaky(ToolEnv):
    def load_tasks(self, split):
        return ListTasks([Task(id="f0", prompt="Call flaky.", answer="4", split=split)])

    def make_tools(self):
        return [flaky]

    def make_rubric(self):
        return Rubric([exact])


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(tiny_model_path())


def test_info_is_derived_from_the_report_and_tool_outcomes_keep_ok():
    env = Flaky(max_turns=3)
    env.reset(seed=0)
    # three calls in one turn: one fine, one raising (the tool's failure), one with a wrong argument name
    action = _call("flaky", x=2) + _call("flaky", x=3) + _call("flaky", y=1) + _call("nope")
    _, reward, terminated, truncated, info = env.step(action)
    report = info["report"]
    assert isinstance(report, TurnReport) and not (terminated or truncated)
    assert [(o.name, o.ok, o.error) for o in report.tools] == [
        ("flaky", True, None), ("flaky", False, "exception"), ("flaky", False, "bad_arguments"),
        ("nope", False, "unknown_tool")]
    assert (info["tool_calls"], info["tool_errors"], info["malformed_calls"]) == (4, 3, 2)
    assert report.reward == reward and info["total_malformed_calls"] == 2
    _, reward, terminated, truncated, info = env.step("Answer: 4")
    report = info["report"]
    assert terminated and report.terminated and report.final_reward == 1.0 and reward == 1.0
    assert info["rubric"] == {"exact": 1.0} and info["answer"] == "4" and info["truncated_reason"] is None


def test_the_turn_budget_truncates_through_the_shared_epilogue():
    env = Flaky(max_turns=1)
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(_call("flaky", x=2))
    assert truncated and not terminated and info["report"].truncated_reason == "max_turns"
    assert info["final_reward"] == 0.0 and env.state.released  # scored, and its resources were given back


def test_a_foreign_info_dict_becomes_a_report():
    report = TurnReport.from_info({"task_id": "x", "tool_calls": 3, "tool_errors": 1, "truncated_reason": "env",
                                   "error": {"kind": "env", "type": "E", "message": "m"}}, 0.5, False, True)
    assert (report.tool_calls, report.tool_errors, report.truncated_reason) == (3, 1, "env")
    assert report.error is not None and report.error.type == "E" and report.reward == 0.5
    assert ToolOutcome("t", ok=False, error="parse").malformed and not ToolOutcome("t", ok=False).malformed


def test_worker_records_tool_outcomes_from_the_report(tok):
    engine = ScriptedEngine(tok, [_call("flaky", x=3), "Answer: 4"])
    [t] = RolloutWorker(engine, lambda: Flaky(max_turns=3)).run_sync([RolloutRequest({"task_index": 0})])
    assert [(r.name, r.ok, r.error) for r in t.turns[0].tool_results] == [("flaky", False, "exception")]
    assert t.cost.tool_calls == 1 and t.cost.tool_errors == 1 and t.reward == 1.0
    assert t.metadata["final_reward"] == 1.0 and t.rubric == {"exact": 1.0}


SLEEP_S = 0.4


@pytest.mark.parametrize("backend", [pytest.param("docker", marks=pytest.mark.docker), "local"])
def test_python_code_trajectories_record_real_sandbox_seconds(tok, backend):
    if backend == "docker":
        require_docker()
    pool = open_sandbox_pool(small_config(backend, timeout_s=10.0))
    try:
        pool.wait_ready()
        env = PythonCodeEnv(split="train", sandbox_pool=pool)
        task = env.tasks[0]
        demo = env.demonstration(task)
        # a tool run that takes SLEEP_S inside the sandbox, then the oracle's answer (scored by running
        # the hidden tests in the sandbox too)
        script = [_call("python", code=f"import time; time.sleep({SLEEP_S}); print('slept')"), demo[-1]["content"]]
        worker = RolloutWorker(ScriptedEngine(tok, script), lambda: PythonCodeEnv(split="train", sandbox_pool=pool))
        [t] = worker.run_sync([RolloutRequest({"task_id": task.id})])
        assert t.error is None and t.reward == 1.0, t.error
        first, last = t.turns
        assert first.tool_results[0].ok and first.tool_results[0].elapsed_s >= SLEEP_S
        # the sandbox time covers the sleeping run and the rubric's test run, and no more than the env's time
        assert SLEEP_S <= t.cost.sandbox_s <= t.timings.env_s + 1e-6
        assert t.cost.sandbox_s > first.tool_results[0].elapsed_s - 0.05  # the rubric's run adds to it
        env.close()
    finally:
        pool.close()


def used_a_tool(tool_calls: list) -> float:
    return float(bool(tool_calls))


class TwoPoints(Flaky):
    """Top reward 2: one point for the answer, one for having called the tool."""

    def make_rubric(self):
        return Rubric([exact, used_a_tool])


def test_train_and_eval_share_one_meaning_of_solved(tok):
    from toolgym.rollouts.eval import summarize
    from toolgym.rollouts.metrics import success_threshold
    from toolgym.trainers.grpo import evaluate, step_metrics

    env = TwoPoints(split="eval")
    threshold = success_threshold(env)
    assert threshold == 2.0
    # half credit (right answer, no tool call) is not solved; full credit is
    for script, solved in ((["Answer: 4"], 0.0), ([_call("flaky", x=2), "Answer: 4"], 1.0)):
        worker = RolloutWorker(ScriptedEngine(tok, script), lambda: TwoPoints(split="eval", max_turns=3))
        trained = evaluate(worker, num_tasks=1, episodes=1, threshold=threshold)
        trajectories = worker.run_sync([RolloutRequest({"task_index": 0})])
        evaluated = summarize(trajectories, threshold).pass_at_k[1]
        step = step_metrics([trajectories], {}, {"generate_s": 1.0, "train_s": 1.0}, threshold)
        assert trained["pass_rate"] == evaluated == step["pass_rate"] == solved, script
