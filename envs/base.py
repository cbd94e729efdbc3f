"""The tool-use environment: a ``gymnasium.Env`` whose observations are chats.

An episode is one task. ``reset`` picks the task (seeded) and returns the opening chat;
``step`` takes the assistant's turn, runs the tool calls it contains and returns the chat with
the tool results appended. A turn without tool calls is the final answer (``terminated``);
running out of turns or tokens is ``truncated``. Each step's reward is that turn's reward, and the
last step adds the rubric's final reward, so per-turn and final rewards both reach the learner.

A new environment is a subclass with a task source, tools and a rubric::

    class Echo(ToolEnv):
        def load_tasks(self, split):
            return ListTasks([Task(id="0", prompt="Say 7 via the tool.", answer="7")])
        def make_tools(self):
            return [echo]
        def make_rubric(self):
            return Rubric([exact_match])
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym

from toolgym.aio import run_in_new_thread
from toolgym.envs.parsing import ParsedTurn, ToolCall, parse_action
from toolgym.envs.report import MALFORMED_KINDS, ToolOutcome, TurnReport
from toolgym.envs.spaces import AssistantTurn, Chat
from toolgym.envs.task import Task, TaskSource
from toolgym.envs.tools import Tool, ToolResult, as_tool
from toolgym.errors import EnvError, ErrorRecord
from toolgym.verifiers.answers import extract_answer
from toolgym.verifiers.rubric import Rubric, Score


@dataclass
class EpisodeState:
    """Everything one episode accumulates. Tools may read it through the hidden ``state`` argument."""

    task: Task
    messages: list[dict[str, Any]]
    turn: int = 0
    tokens: int = 0
    tool_errors: int = 0
    malformed_calls: int = 0
    done: bool = False  # a tool may set this to end the episode (e.g. a ``submit`` tool)
    released: bool = False  # resources were given back (the episode ended or was abandoned)
    calls: list[ToolCall] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)
    resources: dict[str, Any] = field(default_factory=dict)  # sandbox, search client ...
    scratch: dict[str, Any] = field(default_factory=dict)  # env-private per-episode data

    @property
    def tool_calls(self) -> list[ToolCall]:
        """Every call of the episode so far: the same list reward functions get as ``tool_calls``."""
        return self.calls


class ToolEnv(gym.Env):
    """Base class of every toolgym environment. Subclasses override the hooks below."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}
    system_prompt: str = ""
    default_max_turns: ClassVar[int] = 8
    # True when scoring does slow work (runs code in a sandbox, calls a judge): ``astep`` then
    # scores on a worker thread, so the other episodes of the event loop keep going meanwhile.
    blocking_rubric: ClassVar[bool] = False
    version: ClassVar[str] = "0"

    def __init__(self, *, split: str = "train", max_turns: int | None = None, max_tokens: int | None = None,
                 tool_timeout: float | None = None, tool_format: str = "auto", render_mode: str | None = None,
                 tasks: TaskSource | None = None, system_prompt: str | None = None):
        self.split = split
        if system_prompt is not None:  # per-instance override of the class's prompt
            self.system_prompt = system_prompt
        self.max_turns = max_turns or self.default_max_turns
        self.max_tokens = max_tokens
        self.tool_format = tool_format
        self.render_mode = render_mode
        self.tasks: TaskSource = tasks if tasks is not None else self.load_tasks(split)
        if len(self.tasks) == 0:
            raise EnvError(f"{type(self).__name__} has no tasks for split '{split}'")
        self.tools: dict[str, Tool] = {}
        for t in map(as_tool, self.make_tools()):
            if tool_timeout is not None and t.timeout is not None:
                t.timeout = tool_timeout
            self.tools[t.name] = t
        self.rubric: Rubric = self.make_rubric()
        self.reward_bounds = self.rubric.bounds
        self.observation_space = Chat()
        self.action_space = AssistantTurn()
        self._schemas = json.dumps([t.schema for t in self.tools.values()])
        self.state: EpisodeState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- hooks -------------------------------------------------------------------------------
    def load_tasks(self, split: str) -> TaskSource:
        """The tasks of a split."""
        raise NotImplementedError(f"{type(self).__name__} must define load_tasks(split) or be given tasks=")

    def make_tools(self) -> list[Tool | Any]:
        """Tools (``Tool`` objects or plain functions) this env offers."""
        return []

    def make_rubric(self) -> Rubric:
        """The rubric that scores a finished episode."""
        return Rubric()

    def setup_episode(self, state: EpisodeState) -> None:
        """Acquire per-episode resources (sandbox session, search cache) into ``state.resources``."""

    def teardown_episode(self, state: EpisodeState) -> None:
        """Release what :meth:`setup_episode` acquired. Must not raise."""

    def initial_messages(self, task: Task) -> list[dict[str, Any]]:
        """The opening chat: system prompt (if any) and the task's prompt."""
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return head + [{"role": "user", "content": task.prompt}]

    def rubric_inputs(self, state: EpisodeState) -> dict[str, Any]:
        """The inputs reward functions can ask for by name; extend to add env-specific ones."""
        final = next((m for m in reversed(state.messages) if m["role"] == "assistant"), None)
        completion = (final or {}).get("content") or ""
        return {"answer": extract_answer(completion), "reference": state.task.answer, "completion": completion,
                "messages": state.messages, "task": state.task, "state": state, "tool_calls": state.calls}

    def demonstration(self, task: Task) -> list[dict[str, Any]] | None:
        """An oracle chat for ``task`` that earns the maximum reward (for SFT warm start and checks)."""
        return None

    # ---- Gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        super().reset(seed=seed)
        self._end_episode()
        task = self._pick_task(options or {})
        self.state = EpisodeState(task=task, messages=self.initial_messages(task))
        self.setup_episode(self.state)
        info = {"task_id": task.id, "split": task.split, "tools": json.loads(self._schemas), "turn": 0}
        return self._observation(), info

    def step(self, action: Any) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        parsed, calls = self._begin_turn(action)
        busy = self.sandbox_busy_s()
        if all(self._inline(c) for c in calls):
            results = [self._run_inline(c) for c in calls]
        else:
            results = self._run_coroutine(self._run_calls(calls))
        report = self._end_turn(parsed, calls, results, busy)
        return self._step_result(report)

    async def astep(self, action: Any) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        """:meth:`step` for asyncio callers: tool calls of one turn run concurrently."""
        parsed, calls = self._begin_turn(action)
        busy = self.sandbox_busy_s()
        results = await self._run_calls(calls)
        if self.blocking_rubric:
            report = await asyncio.to_thread(self._end_turn, parsed, calls, results, busy)
        else:
            report = self._end_turn(parsed, calls, results, busy)
        if report.ended:
            await asyncio.to_thread(self._end_episode)  # teardown may block: keep it off the event loop
        return self._step_result(report)

    def _step_result(self, report: TurnReport) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        """Gymnasium's 5-tuple for a finished turn; a turn that ends the episode gives its resources back."""
        if report.ended:
            self._end_episode()  # scored: give the sandbox/search session back now, not at the next reset
        return self._observation(), report.reward, report.terminated, report.truncated, report.to_info()

    def close(self) -> None:
        self._end_episode()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.close()
        self._loop = None

    def render(self) -> str | None:
        if self.state is None:
            return None
        return "\n".join(f"[{m['role']}] {m.get('content') or ''}" for m in self.state.messages)

    def __getstate__(self) -> dict[str, Any]:
        # A pickled or copied env carries its configuration, tasks and tools, not a running
        # episode: the event loop and the episode's resources (sandbox sessions, search clients)
        # belong to this process. Call reset() on the copy.
        return {**self.__dict__, "_loop": None, "state": None}

    # ---- one turn ----------------------------------------------------------------------------
    def _begin_turn(self, action: Any) -> tuple[ParsedTurn, list[ToolCall]]:
        state = self.state
        if state is None:
            raise EnvError("call reset() before step()")
        if state.done:
            raise EnvError("the episode is over: call reset() to start another")
        if isinstance(action, dict):
            message = {k: v for k, v in action.items() if k != "num_tokens"}
            message["role"] = "assistant"
            state.tokens += int(action.get("num_tokens") or 0)
        else:
            message = {"role": "assistant", "content": action if isinstance(action, str) else str(action)}
        state.messages.append(message)
        parsed = parse_action(action, self.tool_format)
        return parsed, parsed.calls

    def _inline(self, call: ToolCall) -> bool:
        tool = self.tools.get(call.name)
        return call.error is not None or tool is None or (not tool.is_async and tool.timeout is None)

    def _context(self) -> dict[str, Any]:
        state = self.state
        assert state is not None
        return {"state": state, "task": state.task, "env": self, **state.resources}

    def _run_inline(self, call: ToolCall) -> ToolResult:
        problem = self._call_problem(call)
        if problem is not None:
            return problem
        return self.tools[call.name].call_sync(call.arguments, self._context())

    async def _run_calls(self, calls: list[ToolCall]) -> list[ToolResult]:
        async def one(call: ToolCall) -> ToolResult:
            problem = self._call_problem(call)
            return problem if problem is not None else await self.tools[call.name].call(call.arguments, self._context())

        return list(await asyncio.gather(*(one(c) for c in calls)))

    def _call_problem(self, call: ToolCall) -> ToolResult | None:
        if call.error is not None:
            return ToolResult(content=f"Error: {call.error}", ok=False, error="parse")
        if call.name not in self.tools:
            known = ", ".join(self.tools) or "none"
            return ToolResult(content=f"Error: unknown tool '{call.name}'; available tools: {known}", ok=False,
                              error="unknown_tool")
        return None

    def _end_turn(self, parsed: ParsedTurn, calls: list[ToolCall], results: list[ToolResult],
                  busy_before: float) -> TurnReport:
        state = self.state
        assert state is not None
        state.turn += 1
        outcomes = []
        for call, result in zip(calls, results, strict=True):
            name = call.name or "invalid"
            outcomes.append(ToolOutcome(name, result.ok, result.error, result.elapsed_s, len(result.content)))
            state.tool_errors += not result.ok
            state.malformed_calls += result.error in MALFORMED_KINDS
            state.messages.append({"role": "tool", "tool_call_id": call.id, "name": name, "content": result.content})
        state.calls.extend(calls)
        inputs = {**self.rubric_inputs(state), "turn_calls": calls, "turn_results": results}
        report = TurnReport(task_id=state.task.id, turn=state.turn, turn_reward=self.rubric.score_turn(**inputs),
                            terminated=state.done or not calls, tools=outcomes)
        return self.finish_turn(report, inputs, busy_before)

    def finish_turn(self, report: TurnReport, inputs: dict[str, Any] | None = None,
                    busy_before: float | None = None) -> TurnReport:
        """The epilogue every turn goes through; subclasses with their own turn logic call it too.

        Given a report with the turn's reward and the env's own ``terminated``/``truncated``, it applies
        the turn and token budgets, scores the episode with the rubric when the turn ends it, fills in
        the step's ``reward`` and the sandbox seconds since ``busy_before`` (:meth:`sandbox_busy_s`).
        """
        state = self.state
        assert state is not None
        state.turn_rewards.append(report.turn_reward)
        if not report.ended:
            if state.turn >= self.max_turns:
                report.truncated, report.truncated_reason = True, "max_turns"
            elif self.max_tokens is not None and state.tokens >= self.max_tokens:
                report.truncated, report.truncated_reason = True, "max_tokens"
        report.total_malformed_calls = state.malformed_calls
        report.reward = report.turn_reward
        if report.ended:
            state.done = True
            inputs = inputs if inputs is not None else {**self.rubric_inputs(state), "turn_calls": [],
                                                        "turn_results": []}
            score = self._final_score(inputs)
            report.final_reward, report.rubric, report.answer = score.reward, dict(score.breakdown), inputs["answer"]
            report.reward += score.reward
            if score.error and report.error is None:
                report.error = ErrorRecord(kind="env", type="VerifierError", message=score.error)
        if busy_before is not None:
            report.sandbox_s = self.sandbox_busy_s() - busy_before
        report.reward = float(report.reward)
        return report

    def sandbox_busy_s(self) -> float:
        """Seconds this episode's sandbox sessions have been busy so far (resources with ``busy_s``)."""
        state = self.state
        if state is None:
            return 0.0
        return float(sum(getattr(r, "busy_s", 0.0) for r in state.resources.values()
                         if isinstance(getattr(r, "busy_s", None), int | float)))

    def _final_score(self, inputs: dict[str, Any]) -> Score:
        try:
            return self.rubric.score(**inputs)
        except Exception as exc:  # a broken verifier is the env's failure, recorded, not raised
            return Score(0.0, {}, f"{type(exc).__name__}: {exc}")

    # ---- helpers -----------------------------------------------------------------------------
    def _pick_task(self, options: dict[str, Any]) -> Task:
        if "task" in options and isinstance(options["task"], Task):
            return options["task"]
        if "task_id" in options:
            by_id = getattr(self.tasks, "by_id", None)
            if by_id is not None:
                try:
                    return by_id(options["task_id"])
                except (KeyError, IndexError, ValueError):
                    raise EnvError(f"no task with id {options['task_id']!r} in split '{self.split}'") from None
            for i in range(len(self.tasks)):
                if self.tasks[i].id == options["task_id"]:
                    return self.tasks[i]
            raise EnvError(f"no task with id {options['task_id']!r} in split '{self.split}'")
        if "task_index" in options:
            return self.tasks[int(options["task_index"]) % len(self.tasks)]
        return self.tasks[int(self.np_random.integers(len(self.tasks)))]

    def _observation(self) -> list[dict[str, Any]]:
        # A fresh copy each call: callers keep what we return and the chat keeps growing.
        assert self.state is not None
        return [copy.copy(m) if "tool_calls" not in m else copy.deepcopy(m) for m in self.state.messages]

    def _end_episode(self) -> None:
        # Runs once per episode: at its last step, or at reset()/close() if it was abandoned.
        if self.state is not None and not self.state.released:
            self.state.released = True
            try:
                self.teardown_episode(self.state)
            finally:
                self.state.resources.clear()

    def _run_coroutine(self, coro: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if self._loop is None or self._loop.is_closed():
                self._loop = asyncio.new_event_loop()
            return self._loop.run_until_complete(coro)
        # Called from inside a running loop (a notebook): run on a private thread instead.
        return run_in_new_thread(coro)
