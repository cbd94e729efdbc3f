"""The environment contract: Gymnasium API, turns, tools, rewards, truncation, registry."""

from __future__ import annotations

import asyncio
import json
import time

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

import toolgym
from toolgym.envs import ListTasks, Task, ToolEnv, ToolEnvBatch, tool
from toolgym.errors import ConfigError, EnvError
from toolgym.verifiers import Rubric, exact_match


# ---- a brand-new environment, written the way the README shows ------------------------------
@tool(timeout=None)
def lookup(key: str) -> str:
    """Look up a value in the hidden table.

    Args:
        key: Name of the entry.
    """
    return {"alpha": "7", "beta": "11"}[key]


@tool(hidden=("state",), timeout=None)
def submit(value: str, state) -> str:
    """Submit the final value and end the episode.

    Args:
        value: The value to submit.
    """
    state.scratch["submitted"] = value
    state.done = True
    return "submitted"


def submitted_right(state, reference) -> float:
    return float(state.scratch.get("submitted") == reference)


def step_penalty(turn_calls) -> float:
    return -0.1 * len(turn_calls)


class TableEnv(ToolEnv):
    system_prompt = "Find the value with lookup, then submit it."

    def load_tasks(self, split):
        return ListTasks([Task(id="a", prompt="Value of alpha?", answer="7", split=split),
                          Task(id="b", prompt="Value of beta?", answer="11", split=split)])

    def make_tools(self):
        return [lookup, submit]

    def make_rubric(self):
        return Rubric([submitted_right], turn_funcs=[step_penalty])


def call(name: str, **args) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"


@pytest.fixture(scope="module")
def table_id():
    toolgym.register("tests/Table-v0", entry_point=f"{__name__}:TableEnv")
    return "tests/Table-v0"


def test_new_env_runs_through_gymnasium_make(table_id):
    env = gymnasium.make(table_id)
    obs, info = env.reset(options={"task_id": "b"})
    assert [m["role"] for m in obs] == ["system", "user"]
    assert {t["function"]["name"] for t in info["tools"]} == {"lookup", "submit"}
    assert "state" not in json.dumps(info["tools"])  # hidden argument never shown to the model
    obs, reward, term, trunc, info = env.step(call("lookup", key="beta"))
    assert obs[-1] == {"role": "tool", "tool_call_id": "call_0", "name": "lookup", "content": "11"}
    assert (term, trunc) == (False, False) and reward == pytest.approx(-0.1) and info["turn_reward"] == pytest.approx(-0.1)
    obs, reward, term, trunc, info = env.step(call("submit", value="11"))
    assert term and not trunc
    assert info["final_reward"] == 1.0 and reward == pytest.approx(0.9)
    assert info["rubric"] == {"submitted_right": 1.0}


def test_check_env_passes(table_id):
    check_env(toolgym.make(table_id).unwrapped, skip_render_check=True)
    check_env(toolgym.make("toolgym/Arithmetic-v0").unwrapped, skip_render_check=True)


def test_reset_is_seeded_and_options_pick_tasks():
    env = toolgym.make("toolgym/Arithmetic-v0").unwrapped
    first = [env.reset(seed=s)[1]["task_id"] for s in range(10)]
    again = [env.reset(seed=s)[1]["task_id"] for s in range(10)]
    assert first == again and len(set(first)) > 5
    assert env.reset(options={"task_index": 3})[1]["task_id"] == "arith-train-3"
    assert env.reset(options={"task_id": "arith-train-9"})[0][-1]["content"] == env.tasks[9].prompt
    with pytest.raises(EnvError):
        TableEnv().reset(options={"task_id": "zzz"})


def test_parallel_calls_and_errors_are_tool_messages(table_id):
    env = toolgym.make(table_id).unwrapped
    env.reset(options={"task_id": "a"})
    action = call("lookup", key="alpha") + call("lookup", key="nope") + call("lookup", key=3) + call("ghost")
    obs, _, term, trunc, info = env.step(action)
    tool_msgs = obs[-4:]
    assert [m["role"] for m in tool_msgs] == ["tool"] * 4
    assert tool_msgs[0]["content"] == "7"
    assert tool_msgs[1]["content"].startswith("Error: KeyError")
    assert "expected string" in tool_msgs[2]["content"]
    assert "unknown tool 'ghost'" in tool_msgs[3]["content"]
    assert info["tool_calls"] == 4 and info["tool_errors"] == 3 and info["malformed_calls"] == 2
    assert not term and not trunc


def test_final_answer_terminates_and_scores():
    env = toolgym.make("toolgym/Arithmetic-v0", split="eval").unwrapped
    env.reset(options={"task_index": 0})
    right = env.state.task.answer
    _, reward, term, trunc, info = env.step(f"I computed it.\nAnswer: {right}")
    assert term and not trunc and reward == 1.0 and info["answer"] == right
    env.reset(options={"task_index": 0})
    _, reward, *_ = env.step(f"Answer: {int(right) + 1}")
    assert reward == 0.0
    with pytest.raises(EnvError):
        env.step("again")  # the episode is over


def test_answer_inside_tool_call_does_not_count():
    env = toolgym.make("toolgym/Arithmetic-v0").unwrapped
    env.reset(options={"task_index": 1})
    right = env.state.task.answer
    _, reward, term, _, _ = env.step({"role": "assistant", "content": None, "tool_calls": [
        {"id": "x", "type": "function", "function": {"name": "calculator", "arguments": json.dumps({"expression": right})}}]})
    assert not term and reward == 0.0
    _, reward, term, _, info = env.step("Done.")
    assert term and reward == 0.0 and info["answer"] is None


def test_truncation_by_turns_and_tokens():
    env = toolgym.make("toolgym/Arithmetic-v0", max_turns=2, max_tokens=50).unwrapped
    env.reset(seed=0)
    _, _, term, trunc, _ = env.step(call("calculator", expression="1+1"))
    assert not term and not trunc
    _, _, term, trunc, info = env.step(call("calculator", expression="2+2"))
    assert trunc and not term and info["truncated_reason"] == "max_turns" and info["final_reward"] == 0.0
    env.reset(seed=0)
    _, _, term, trunc, info = env.step({"role": "assistant", "content": call("calculator", expression="1"),
                                        "num_tokens": 60})
    assert trunc and info["truncated_reason"] == "max_tokens"


def test_observations_are_fresh_copies():
    env = toolgym.make("toolgym/Arithmetic-v0").unwrapped
    obs, _ = env.reset(seed=0)
    obs[-1]["content"] = "tampered"
    obs2, *_ = env.step(call("calculator", expression="2*3"))
    assert obs2[1]["content"] != "tampered" and obs2[-1]["content"] == "6"


def test_slow_async_tool_times_out_without_raising():
    @tool(timeout=0.05)
    async def sleepy(seconds: float) -> str:
        """Sleep a while.

        Args:
            seconds: How long.
        """
        await asyncio.sleep(seconds)
        return "woke"

    class SleepEnv(TableEnv):
        def make_tools(self):
            return [sleepy]

    env = SleepEnv()
    env.reset(seed=0)
    obs, *_ = env.step(call("sleepy", seconds=5))
    assert "timed out" in obs[-1]["content"]
    obs, *_ = env.step(call("sleepy", seconds=0))
    assert obs[-1]["content"] == "woke"


def test_batch_returns_ready_episodes_first():
    @tool(timeout=5)
    async def wait(seconds: float) -> str:
        """Wait.

        Args:
            seconds: How long.
        """
        await asyncio.sleep(seconds)
        return f"waited {seconds}"

    class WaitEnv(TableEnv):
        def make_tools(self):
            return [wait]

    async def go():
        batch = ToolEnvBatch([WaitEnv() for _ in range(3)])
        batch.reset(seeds=[0, 1, 2])
        batch.submit(0, call("wait", seconds=0.5))
        batch.submit(1, call("wait", seconds=0.0))
        batch.submit(2, "final answer")
        t0 = time.perf_counter()
        first = await batch.ready()
        first_wait = time.perf_counter() - t0
        rest = await batch.gather()
        return first, first_wait, rest

    first, first_wait, rest = asyncio.run(go())
    assert {r.index for r in first} <= {1, 2} and first
    assert 0 in {r.index for r in rest}
    assert first_wait < 0.5  # the fast episodes did not wait for the slow tool


def test_unknown_id_names_the_closest():
    with pytest.raises(ConfigError, match="toolgym/Arithmetic-v0"):
        toolgym.make("toolgym/Arithmetc-v0")
    with pytest.raises(ConfigError, match="module.path:ClassName"):
        toolgym.register("x/Y-v0", entry_point="no_colon")


def test_broken_verifier_is_recorded_not_raised():
    def crashes(answer):
        raise RuntimeError("verifier bug")

    class Broken(TableEnv):
        def make_rubric(self):
            return Rubric([crashes])

    env = Broken()
    env.reset(seed=0)
    _, reward, term, _, info = env.step("Answer: 7")
    assert term and reward == 0.0 and "verifier bug" in info["error"]["message"]


@pytest.mark.parametrize("difficulty", [1, 2])
def test_arithmetic_splits_are_disjoint_and_demos_score(difficulty):
    train = toolgym.make("toolgym/Arithmetic-v0", difficulty=difficulty).unwrapped
    evals = toolgym.make("toolgym/Arithmetic-v0", difficulty=difficulty, split="eval").unwrapped
    train_prompts = {train.tasks[i].prompt for i in range(len(train.tasks))}
    assert not train_prompts & {evals.tasks[i].prompt for i in range(len(evals.tasks))}
    from toolgym.envs.conformance import replay

    for i in range(5):
        task = evals.tasks[i]
        assert replay(evals, evals.demonstration(task), task.id)[0] == 1.0


def test_sync_step_with_async_tool_inside_a_running_loop():
    @tool(timeout=1)
    async def ping() -> str:
        """Answer pong."""
        return "pong"

    class PingEnv(TableEnv):
        def make_tools(self):
            return [ping]

    env = PingEnv()
    env.reset(seed=0)

    async def inside_loop():  # e.g. a notebook cell: step() must not need asyncio.run
        return env.step(call("ping"))

    obs, *_ = asyncio.run(inside_loop())
    assert obs[-1]["content"] == "pong"
    obs, *_ = env.step(call("ping"))  # and from plain sync code, on the env's own loop
    assert obs[-1]["content"] == "pong"


class CountingEnv(ToolEnv):
    """Counts the per-episode resources it hands out and gets back."""

    def __init__(self, **kwargs):
        self.held = 0
        self.released = 0
        super().__init__(**kwargs)

    def load_tasks(self, split):
        return ListTasks([Task(id="0", prompt="Say 7.", answer="7")])

    def make_rubric(self):
        return Rubric([exact_match])

    def setup_episode(self, state):
        self.held += 1
        state.resources["lease"] = object()

    def teardown_episode(self, state):
        self.released += 1


@pytest.mark.parametrize("use_async", [False, True])
def test_resources_go_back_when_the_episode_ends_and_only_once(use_async):
    env = CountingEnv(max_turns=2)
    env.reset(seed=0)
    _, reward, term, _, _ = asyncio.run(env.astep("Answer: 7")) if use_async else env.step("Answer: 7")
    assert term and reward == 1.0 and (env.held, env.released) == (1, 1) and env.state.resources == {}
    env.reset(seed=0)  # the ended episode is not torn down twice
    assert (env.held, env.released) == (2, 1)
    env.close()  # an abandoned episode is torn down at close
    assert env.released == 2


def slow_grade(completion) -> float:
    time.sleep(0.3)  # stands in for running hidden tests in a sandbox
    return float("7" in completion)


class SlowGradeEnv(CountingEnv):
    blocking_rubric = True

    def make_rubric(self):
        return Rubric([slow_grade])


def test_a_blocking_rubric_scores_off_the_event_loop():
    async def main():
        env = SlowGradeEnv()
        env.reset(seed=0)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        _, reward, term, _, _ = await env.astep("Answer: 7")
        task.cancel()
        return reward, term, ticks

    reward, term, ticks = asyncio.run(main())
    # 0.3 s of grading: the loop kept ticking meanwhile (a blocked loop would tick once at most)
    assert reward == 1.0 and term and ticks >= 5
