"""Sandbox tools and the PythonCode environment, on Docker and on the local backend."""

from __future__ import annotations

import json

import pytest
from toolgym_python_code import TASKS, PythonCodeEnv, extract_code, run_hidden_tests

from toolgym.envs.sandbox_tools import python, shell
from toolgym.sandboxes.testing import require_docker, small_config


def _call(name: str, **arguments: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


@pytest.fixture(scope="module")
def env_pair(any_pool):
    train = PythonCodeEnv(split="train", sandbox_pool=any_pool)
    evals = PythonCodeEnv(split="eval", sandbox_pool=any_pool)
    yield train, evals
    train.close()
    evals.close()


def test_task_data_is_well_formed():
    names = [t.name for t in TASKS]
    assert 20 <= len(TASKS) <= 40 and len(set(names)) == len(names)
    splits = {t.split for t in TASKS}
    assert splits == {"train", "eval"}
    for task in TASKS:
        assert task.tests and f"def {task.name}(" in task.solution
    assert extract_code("no code") is None


def test_tools_hide_the_sandbox_argument():
    for t in (python, shell):
        assert "sandbox" not in t.parameters["properties"] and t.hidden == ("sandbox",)


def test_demonstrations_score_full_reward(env_pair):
    for env in env_pair:
        for i in range(len(env.tasks)):
            task = env.tasks[i]
            demo = env.demonstration(task)
            env.reset(options={"task_id": task.id})
            obs, reward, terminated, _, _ = env.step(demo[-3]["content"])
            assert not terminated and obs[-1]["role"] == "tool"
            assert obs[-1]["content"] == demo[-2]["content"], (task.id, obs[-1]["content"])
            _, reward, terminated, _, info = env.step(demo[-1]["content"])
            assert terminated and info["final_reward"] == 1.0, (task.id, info)


def test_python_tool_is_stateful_and_shell_shares_the_workdir(env_pair):
    env = env_pair[0]
    env.reset(options={"task_index": 0})
    obs, *_ = env.step(_call("python", code="x = 20\nopen('note.txt', 'w').write('hi')"))
    assert obs[-1]["content"] == "(no output)"
    obs, *_ = env.step(_call("python", code="print(x + 22)"))
    assert obs[-1]["content"] == "42\n"
    obs, *_ = env.step(_call("shell", command="cat note.txt"))
    assert obs[-1]["content"] == "hi"
    obs, *_ = env.step(_call("python", code="while True: pass"))
    assert "[timeout" in obs[-1]["content"] or "timed out" in obs[-1]["content"]


def test_next_episode_starts_clean(env_pair):
    env = env_pair[0]
    env.reset(options={"task_index": 1})
    env.step(_call("python", code="leftover = 1\nopen('junk', 'w').write('x')"))
    env.reset(options={"task_index": 1})
    obs, *_ = env.step(_call("python", code="import os\nprint('leftover' in globals(), os.listdir('.'))"))
    assert obs[-1]["content"] == "False []\n"


def test_wrong_fake_and_missing_answers_score_less(env_pair, any_pool):
    env = env_pair[0]
    task = env.tasks.by_id("pycode-add")
    env.reset(options={"task_id": task.id})
    _, _, _, _, info = env.step("```python\ndef add(a, b):\n    return a - b\n```")
    assert 0.0 <= info["final_reward"] < 1.0
    env.reset(options={"task_id": task.id})
    _, _, _, _, info = env.step("I think the answer is obvious.")
    assert info["final_reward"] == 0.0
    # Printing a fake "everything passed" line does not help: results are compared on the host.
    cheat = "import sys\nprint('@@result-0@@[\"5\", \"0\", \"1000000000001\"]')\nsys.exit(0)\ndef add(a, b):\n    return 0"
    with any_pool.acquire() as sb:
        assert run_hidden_tests(sb, cheat, task.metadata["tests"]) == 0.0
        assert run_hidden_tests(sb, task.answer, task.metadata["tests"]) == 1.0


@pytest.mark.parametrize("backend", [pytest.param("docker", marks=pytest.mark.docker), "local"])
def test_conformance_checks_pass(backend):
    import toolgym
    from toolgym.envs.conformance import run_checks
    from toolgym.sandboxes import close_shared_pools

    if backend == "docker":
        require_docker()
    # Env kwargs must stay picklable (Gymnasium checks the spec): pass a config, not a pool.
    toolgym.register("test/PythonCode-v0", entry_point="toolgym_python_code:PythonCodeEnv")
    try:
        report = run_checks("test/PythonCode-v0", sandbox_config=small_config(backend))
    finally:
        close_shared_pools()
    assert report.passed, [(r.name, r.detail) for r in report.results if not r.passed]


def test_hidden_tests_need_a_self_contained_solution(any_pool):
    task = next(t for t in TASKS if t.name == "add")
    tests = [list(t) for t in task.tests]
    with any_pool.acquire() as sb:
        # Files the model left in the work dir are not importable by the graded solution.
        sb.put_file("helper.py", "def add(a, b):\n    return a + b\n")
        assert sb.run("from helper import add; print(add(1, 2))").stdout == "3\n"
        assert run_hidden_tests(sb, "from helper import add", tests) == 0.0
        assert run_hidden_tests(sb, "def add(a, b):\n    return a + b", tests) == 1.0
