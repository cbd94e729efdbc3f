"""The rollout worker: token exactness, concurrency, budgets, and failures recorded as data."""

from __future__ import annotations

import asyncio
import json

import pytest
from transformers import AutoTokenizer

import toolgym
from toolgym.envs.base import ToolEnv
from toolgym.envs.task import ListTasks, Task
from toolgym.envs.tools import tool
from toolgym.errors import ModelError
from toolgym.rollouts.engines.base import SamplingParams
from toolgym.rollouts.engines.fake import Cut, ScriptedEngine
from toolgym.rollouts.engines.hf import HFEngine
from toolgym.rollouts.records import TrajectoryWriter, read_trajectories
from toolgym.rollouts.tiny import THINKING_CHAT_TEMPLATE, tiny_model_path
from toolgym.rollouts.tokens import ChatFormat
from toolgym.rollouts.worker import RolloutConfig, RolloutRequest, RolloutWorker
from toolgym.verifiers.rubric import Rubric

ARITH = "toolgym/Arithmetic-v0"


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(tiny_model_path())


def call(name: str, **args) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


def arith_env():
    return toolgym.make(ARITH).unwrapped


def oracle(prompt, chat, index):
    """Solve Arithmetic tasks: call the calculator with the task's expression, then answer."""
    last = chat.messages[-1]
    if last["role"] == "user":
        task = toolgym.make(ARITH).unwrapped.tasks
        idx = next(i for i in range(len(task)) if task[i].prompt == last["content"])
        return call("calculator", expression=task[idx].metadata["expression"])
    return "Answer: " + last["content"]


IN_FLIGHT = {"now": 0, "max": 0}


@tool(timeout=5)
async def slow(seconds: float) -> str:
    """Sleep, then say done.

    Args:
        seconds: How long.
    """
    IN_FLIGHT["now"] += 1
    IN_FLIGHT["max"] = max(IN_FLIGHT["max"], IN_FLIGHT["now"])
    try:
        await asyncio.sleep(seconds)
    finally:
        IN_FLIGHT["now"] -= 1
    return "done"


@tool(timeout=None)
async def hang() -> str:
    """Never returns."""
    await asyncio.Event().wait()
    return "unreachable"


@tool(timeout=None)
def boom() -> str:
    """Always raises."""
    raise RuntimeError("kaboom")


def reached(completion: str) -> float:
    return 1.0 if completion.strip().endswith("ok") else 0.0


class Toy(ToolEnv):
    default_max_turns = 4

    def load_tasks(self, split):
        return ListTasks([Task(id=f"toy-{i}", prompt=f"Task {i}", answer="ok") for i in range(4)])

    def make_tools(self):
        return [slow, hang, boom]

    def make_rubric(self):
        return Rubric([reached])


def check_exact(trajectories, engine):
    """Every trajectory = prompt + (sampled ids verbatim + env tokens)*, mask exactly on sampled ids."""
    sampled = {}
    for s in engine.log:
        sampled.setdefault(tuple(s.prompt_ids), []).append(s.completion)
    for t in trajectories:
        t.check()
        pos = t.prompt_len
        for turn in t.turns:
            prefix = tuple(t.token_ids[:turn.start])
            matches = [c for c in sampled.get(prefix, []) if t.token_ids[turn.start:turn.end] == c.token_ids
                       and t.logprobs[turn.start:turn.end] == c.logprobs]
            assert matches, "a turn's tokens/logprobs are not what the engine sampled for that prompt"
            assert turn.start == pos and t.loss_mask[turn.start:turn.end] == [1] * (turn.end - turn.start)
            assert t.loss_mask[turn.env_start:turn.env_end] == [0] * (turn.env_end - turn.env_start)
            pos = turn.env_end
        assert pos == len(t.token_ids) or t.turns[-1].end == len(t.token_ids)
        assert sum(t.loss_mask) == sum(tr.end - tr.start for tr in t.turns)


def test_oracle_episodes_are_token_exact_and_rewarded(tok):
    engine = ScriptedEngine(tok, oracle)
    worker = RolloutWorker(engine, arith_env)
    trajs = worker.run_sync([RolloutRequest({"task_index": i}, group_size=2) for i in range(3)])
    assert [(t.task_id, t.sample_index) for t in trajs] == [(f"arith-train-{i}", s) for i in range(3) for s in (0, 1)]
    check_exact(trajs, engine)
    fmt = ChatFormat(tok, json.loads(arith_env()._schemas))
    for t in trajs:
        assert t.error is None and t.reward == 1.0 and t.rubric["numeric_close"] == 1.0
        assert len(t.turns) == 2 and t.cost.tool_calls == 1 and t.terminated and not t.truncated
        assert t.group_id == t.task_id and t.versions["toolgym"] == toolgym.__version__
        # the pack that provided the env is recorded: name, version and content hash of its sources
        assert t.versions["pack"] == "toolgym-arithmetic" and t.versions["pack_version"] == "0.1.0"
        assert t.versions["pack_hash"].startswith("sha256:")
        # a canonical sampler's trajectory is exactly the re-rendered conversation
        assert t.token_ids == fmt.encode(fmt.render(t.messages, generation_prompt=False))[:-1]


def test_hf_engine_trajectories_are_token_exact(tok):
    class Recording:
        def __init__(self, inner):
            self.inner, self.tokenizer, self.log = inner, inner.tokenizer, []

        async def generate(self, prompt_ids, params, chat=None):
            from toolgym.rollouts.engines.fake import Sampled

            c = await self.inner.generate(prompt_ids, params)
            self.log.append(Sampled(list(prompt_ids), c))
            return c

    inner = HFEngine.from_pretrained(tiny_model_path(), device="cpu")
    engine = Recording(inner)
    # the untrained model writes noise, mostly cut at the token limit; episodes end after one turn or a few
    cfg = RolloutConfig(max_new_tokens=24, max_turns=3)
    try:
        trajs = RolloutWorker(engine, arith_env, cfg).run_sync(
            [RolloutRequest({"task_index": i}, group_size=2) for i in range(4)])
    finally:
        inner.close()
    assert len(trajs) == 8
    check_exact(trajs, engine)
    assert all(t.exact and t.error is None for t in trajs)


def test_hf_engine_multi_turn_is_token_exact(tok):
    """Real sampled ids (ignore_eos: cut at the limit) across tool turns, with the scripted env forcing calls."""
    inner = HFEngine.from_pretrained(tiny_model_path(), device="cpu")

    class Forced(Toy):
        def _begin_turn(self, action):  # every turn but the third calls the slow tool
            parsed, _ = super()._begin_turn(action)
            from toolgym.envs.parsing import ToolCall

            calls = [ToolCall("slow", {"seconds": 0.0}, "call_0")] if self.state.turn < 2 else []
            return parsed, calls

    log = []

    class Recording:
        tokenizer = inner.tokenizer

        async def generate(self, prompt_ids, params, chat=None):
            from toolgym.rollouts.engines.fake import Sampled

            c = await inner.generate(prompt_ids, params)
            log.append(Sampled(list(prompt_ids), c))
            return c

    engine = Recording()
    engine.log = log
    cfg = RolloutConfig(max_new_tokens=8, ignore_eos=True)
    try:
        trajs = RolloutWorker(engine, Forced, cfg).run_sync([RolloutRequest({"task_index": 0}, group_size=3)])
    finally:
        inner.close()
    check_exact(trajs, engine)
    for t in trajs:
        assert len(t.turns) == 3 and all(tr.finish_reason == "length" for tr in t.turns)
        # the end-of-turn token after each cut completion is env-side (mask 0)
        eot = inner.tokenizer.convert_tokens_to_ids("<|im_end|>")
        for tr in t.turns[:-1]:
            assert t.token_ids[tr.env_start] == eot and t.loss_mask[tr.env_start] == 0


def test_episodes_overlap_tool_waits_with_generation(tok):
    IN_FLIGHT.update(now=0, max=0)
    generated_while_tools_ran = []

    def script(prompt, chat, i):
        generated_while_tools_ran.append(IN_FLIGHT["now"])
        last = chat.messages[-1]
        # tasks differ in tool latency, so fast episodes come back while slow ones still wait
        return call("slow", seconds=0.02 + 0.15 * int(last["content"][-1])) if last["role"] == "user" else "ok"

    worker = RolloutWorker(ScriptedEngine(tok, script), Toy)
    trajs = worker.run_sync([RolloutRequest({"task_index": i}, group_size=4) for i in range(4)])
    assert len(trajs) == 16 and all(t.reward == 1.0 for t in trajs)
    assert IN_FLIGHT["max"] > 1  # tool calls of different episodes ran at the same time
    assert max(generated_while_tools_ran) > 0  # some episodes generated while others waited on tools


def test_bad_model_output_is_handled_by_the_env_not_an_error(tok):
    script = ["\x00\x01 garbage ]]}{", call("nope"), "<tool_call>{not json</tool_call>", "<tool_call>{\"name\": 1",
              "final"]
    worker = RolloutWorker(ScriptedEngine(tok, lambda p, c, i: script[i] if i < len(script) else "ok"), Toy,
                           RolloutConfig(max_concurrency=1))
    [garbage] = worker.run_sync([RolloutRequest({"task_index": 0})])
    assert garbage.error is None and garbage.reward == 0.0 and len(garbage.turns) == 1
    [t] = worker.run_sync([RolloutRequest({"task_index": 1})])  # unknown tool, bad JSON, unclosed tag
    assert t.error is None and t.cost.malformed_calls == 3 and len(t.turns) == 4
    assert t.reward == 0.0 and t.terminated  # fourth turn answered "final"


def test_endless_output_is_truncated_by_token_budgets(tok):
    engine = ScriptedEngine(tok, [Cut("la " * 200)])
    cfg = RolloutConfig(max_new_tokens=32)
    [t] = RolloutWorker(engine, Toy, cfg).run_sync([RolloutRequest({"task_index": 0})])
    assert t.error is None and t.turns[0].finish_reason == "length"
    assert t.turns[0].end - t.turns[0].start == 32
    # a cut turn without a tool call is the final answer: the env terminates it
    assert t.terminated and len(t.token_ids) == t.prompt_len + 32


def test_total_token_budget_truncates_a_tool_loop(tok):
    engine = ScriptedEngine(tok, [call("slow", seconds=0)])
    cfg = RolloutConfig(max_new_tokens=64, max_total_tokens=700, max_turns=50)
    [t] = RolloutWorker(engine, Toy, cfg).run_sync([RolloutRequest({"task_index": 0})])
    assert t.truncated and t.truncated_reason == "max_total_tokens" and t.error is None
    assert t.prompt_len < 400 and len(t.turns) > 2
    assert len(t.token_ids) <= 700 + 64


def test_hung_tool_fails_only_its_episode(tok):
    def script(prompt, chat, i):
        if chat.messages[-1]["role"] != "user":
            return "ok"
        return call("hang") if chat.messages[-1]["content"] == "Task 0" else call("slow", seconds=0.01)

    cfg = RolloutConfig(step_timeout_s=0.6, max_retries=0)
    trajs = RolloutWorker(ScriptedEngine(tok, script), Toy, cfg).run_sync(
        [RolloutRequest({"task_index": i}) for i in range(3)])
    by_task = {t.task_id: t for t in trajs}
    assert by_task["toy-0"].error is not None and by_task["toy-0"].error.kind == "tool"
    assert "timed" in by_task["toy-0"].error.message or "longer" in by_task["toy-0"].error.message
    assert all(by_task[f"toy-{i}"].error is None and by_task[f"toy-{i}"].reward == 1.0 for i in (1, 2))


def test_raising_tool_is_reported_to_the_model(tok):
    seen = []

    def script(prompt, chat, i):
        if chat.messages[-1]["role"] == "tool":
            seen.append(chat.messages[-1]["content"])
            return "ok"
        return call("boom")

    [t] = RolloutWorker(ScriptedEngine(tok, script), Toy).run_sync([RolloutRequest({"task_index": 0})])
    assert t.error is None and t.reward == 1.0 and "kaboom" in seen[0]
    assert t.cost.tool_errors == 1 and not t.turns[0].tool_results[0].ok


def test_engine_error_mid_batch_is_retried_and_others_complete(tok):
    failures = {"left": 2}

    def script(prompt, chat, i):
        if chat.messages[-1]["content"] == "Task 1" and failures["left"] > 0:
            failures["left"] -= 1
            return ModelError("server hiccup")
        return "ok"

    cfg = RolloutConfig(max_retries=3)
    trajs = RolloutWorker(ScriptedEngine(tok, script), Toy, cfg).run_sync(
        [RolloutRequest({"task_index": i}) for i in range(4)])
    assert all(t.error is None and t.reward == 1.0 for t in trajs)
    assert {t.task_id: t.attempts for t in trajs} == {"toy-0": 1, "toy-1": 3, "toy-2": 1, "toy-3": 1}


def test_retries_are_bounded_and_unexpected_errors_recorded(tok):
    def script(prompt, chat, i):
        return RuntimeError("driver crashed") if chat.messages[-1]["content"] == "Task 0" else "ok"

    cfg = RolloutConfig(max_retries=1)
    trajs = RolloutWorker(ScriptedEngine(tok, script), Toy, cfg).run_sync(
        [RolloutRequest({"task_index": i}) for i in range(2)])
    failed, fine = trajs
    assert failed.error.kind == "model" and failed.error.retryable and failed.attempts == 2
    assert "driver crashed" in failed.error.message and failed.reward == 0.0
    assert fine.error is None


def test_env_factory_failure_is_recorded(tok):
    def broken():
        raise RuntimeError("no sandbox")

    [t] = RolloutWorker(ScriptedEngine(tok, ["ok"]), broken).run_sync([RolloutRequest({"task_index": 0})])
    assert t.error is not None and "no sandbox" in t.error.message


def test_episode_wall_time_truncates(tok):
    engine = ScriptedEngine(tok, [call("slow", seconds=0.2)])
    cfg = RolloutConfig(episode_timeout_s=0.5, max_turns=20)
    [t] = RolloutWorker(engine, Toy, cfg).run_sync([RolloutRequest({"task_index": 0})])
    assert t.truncated_reason == "time_limit" and t.truncated and t.error is None and len(t.turns) <= 3


def test_split_policy_makes_segments(tok):
    def script(prompt, chat, i):
        last = chat.messages[-1]
        return "<think>\nhm\n</think>\n\n" + (call("slow", seconds=0) if last["role"] == "user" else "ok")

    engine = ScriptedEngine(tok, script)
    cfg = RolloutConfig(chat_template=THINKING_CHAT_TEMPLATE, drift_policy="split")
    trajs = RolloutWorker(engine, Toy, cfg).run_sync([RolloutRequest({"task_index": 0})])
    assert [t.segment for t in trajs] == [0, 1]
    assert all(t.reward == 1.0 and t.drift[0].kind == "template" for t in trajs)
    first, second = trajs
    assert len(first.turns) == 1 and len(second.turns) == 1
    assert "hm" not in tok.decode(second.token_ids[: second.prompt_len])  # the re-render drops the think
    check_exact(trajs, engine)
    keep = RolloutWorker(ScriptedEngine(tok, script), Toy, RolloutConfig(chat_template=THINKING_CHAT_TEMPLATE))
    [kept] = keep.run_sync([RolloutRequest({"task_index": 0})])
    assert kept.drift[0].action == "keep" and len(kept.turns) == 2


def test_resume_skips_done_episodes_and_writer_callback(tok, tmp_path):
    path = tmp_path / "r.jsonl"
    with TrajectoryWriter(path) as w:
        engine = ScriptedEngine(tok, ["ok"])
        RolloutWorker(engine, Toy, on_trajectory=w.write).run_sync([RolloutRequest({"task_index": 0}, group_size=2)])
    assert len(read_trajectories(path)) == 2
    done = {t.key for t in read_trajectories(path)}
    engine = ScriptedEngine(tok, ["ok"])
    again = RolloutWorker(engine, Toy, skip=done).run_sync(
        [RolloutRequest({"task_index": 0}, group_size=3), RolloutRequest({"task_id": "toy-0"}, group_size=2)])
    assert [(t.task_id, t.sample_index) for t in again] == [("toy-0", 2)]


def test_sampling_params_reach_the_engine(tok):
    seen = []

    class Spy(ScriptedEngine):
        async def generate(self, prompt_ids, params, chat=None):
            seen.append(params)
            return await super().generate(prompt_ids, params, chat)

    cfg = RolloutConfig(max_new_tokens=17, temperature=0.5, top_p=0.9, top_k=5)
    RolloutWorker(Spy(tok, ["ok"]), Toy, cfg).run_sync([RolloutRequest({"task_index": 0})])
    assert seen == [SamplingParams(max_tokens=17, temperature=0.5, top_p=0.9, top_k=5)]


def test_run_sync_works_inside_a_running_loop_and_wrapped_envs(tok):
    async def inside():
        worker = RolloutWorker(ScriptedEngine(tok, ["ok"]), lambda: toolgym.make("toolgym/Arithmetic-v0"))
        return worker.run_sync([RolloutRequest({"task_index": 0})])

    [t] = asyncio.run(inside())
    assert t.error is None and t.env_id == ARITH


def test_hf_micro_batch_failure_is_retried_per_episode(tok):
    engine = HFEngine.from_pretrained(tiny_model_path(), device="cpu")
    real = engine._generate
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA error: an illegal memory access")  # the whole first batch fails
        return real(*args, **kwargs)

    engine._generate = flaky
    try:
        cfg = RolloutConfig(max_new_tokens=4, max_turns=1, max_retries=2)
        trajs = RolloutWorker(engine, arith_env, cfg).run_sync([RolloutRequest({"task_index": 0}, group_size=4)])
    finally:
        engine.close()
    assert len(trajs) == 4 and all(t.error is None for t in trajs)
    assert any(t.attempts == 2 for t in trajs)  # those in the failed batch ran again
