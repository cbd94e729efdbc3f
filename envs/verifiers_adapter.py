"""verifiers (v1) tasksets as toolgym environments.

A verifiers environment is a *taskset* (rows of ``TaskData``: prompt, system prompt, answer
fields ...), a *task* type that scores a finished conversation with ``@vf.reward`` and
``@vf.metric`` methods (parameters filled by name: ``task`` is the row, ``trace`` the
conversation), and a *harness* that drives the model. toolgym drives the model itself, so
:class:`VerifiersEnv` keeps the first two and replaces the harness:

- ``load_tasks``: the taskset's rows, in ``load()`` order; ids are the rows' ``id`` (else
  ``"{split}-{index}"``); a row's ``answer`` field, when it has one, becomes the task's reference.
- ``initial_messages``: the row's system prompt and prompt (text or a message list).
- ``make_rubric``: one function, ``verifiers_reward``, that rebuilds a verifiers ``Trace`` from
  the chat and awaits the task's own ``score``; its weighted sum is the final reward. Each
  ``@vf.reward``/``@vf.metric`` value is logged beside it (weight 0).
- ``make_tools``: toolgym tools given in ``tools=`` (verifiers toolsets are MCP servers; they
  are not bridged, and a taskset that declares one is refused with a ``ConfigError``).

Not supported: containers (``NEEDS_CONTAINER``), judges (they call a model), user simulators
and harness-specific stop conditions. Rewards that require a ``runtime`` are skipped by
verifiers itself when there is none.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, distribution
from types import ModuleType
from typing import Any

from toolgym.aio import run_in_new_thread
from toolgym.envs.base import EpisodeState, ToolEnv
from toolgym.envs.task import ListTasks, Task
from toolgym.envs.text_env import resolve
from toolgym.envs.tools import Tool
from toolgym.errors import ConfigError
from toolgym.verifiers.rubric import Rubric


def import_verifiers() -> ModuleType:
    """``verifiers.v1`` from the installed ``verifiers`` distribution (a ``ConfigError`` when it is missing)."""
    try:
        distribution("verifiers")
    except PackageNotFoundError:
        raise ConfigError("the verifiers adapter needs the 'verifiers' package: pip install verifiers") from None
    try:
        return importlib.import_module("verifiers.v1")
    except ImportError as exc:
        raise ConfigError(f"cannot import verifiers.v1 (verifiers >= 0.4 is needed): {exc}") from exc


def _run(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    return run_in_new_thread(coro)  # called from inside a loop (astep): score on a private one


def _vf_message(vf: ModuleType, message: dict[str, Any]) -> Any:
    """A toolgym chat message as a verifiers message."""
    from verifiers.v1 import types as vt

    role, content = message.get("role"), message.get("content")
    if role == "assistant":
        calls = [vt.ToolCall(id=str(c.get("id") or f"call_{i}"), name=str(c["function"].get("name", "")),
                             arguments=a if isinstance(a := c["function"].get("arguments", "{}"), str) else json.dumps(a))
                 for i, c in enumerate(message.get("tool_calls") or [])
                 if isinstance(c, dict) and isinstance(c.get("function"), dict)]
        return vt.AssistantMessage(content=content, tool_calls=calls or None)
    if role == "tool":
        return vt.ToolMessage(tool_call_id=str(message.get("tool_call_id") or ""), content=content or "",
                              name=message.get("name"))
    if role == "system":
        return vt.SystemMessage(content=content or "")
    return vt.UserMessage(content=content or "")


def trace_from_messages(vf: ModuleType, vf_task: Any, messages: list[dict[str, Any]]) -> Any:
    """A verifiers ``Trace`` of ``vf_task`` holding the chat as one branch (assistant turns sampled)."""
    from verifiers.v1.graph import MessageNode
    from verifiers.v1.trace import AgentInfo, TraceTask

    nodes = [MessageNode(parent=i - 1 if i else None, message=_vf_message(vf, m), sampled=m.get("role") == "assistant")
             for i, m in enumerate(messages)]
    task = TraceTask(type=type(vf_task).__name__, data=vf_task.data, key=vf_task.key, hash=vf_task.hash)
    return vf.Trace(task=task, agent=AgentInfo(config=vf.AgentConfig()), nodes=nodes, is_completed=True, ok=True)


def _scores(vf_task: Any, messages: list[dict[str, Any]], state: EpisodeState) -> Any:
    """The episode's scored trace, computed once per final chat (every rubric entry reads it)."""
    cached = state.scratch.get("vf_trace")
    if cached is not None and cached[0] == len(messages):
        return cached[1]
    vf = import_verifiers()
    trace = trace_from_messages(vf, vf_task, messages)
    _run(vf_task.score(trace))
    state.scratch["vf_trace"] = (len(messages), trace)
    return trace


def verifiers_reward(vf_task: Any, messages: list[dict[str, Any]], state: EpisodeState) -> float:
    """The task's weighted verifiers reward (sum of its ``@vf.reward`` scores times weights)."""
    return float(_scores(vf_task, messages, state).reward)


class VerifiersSignal:
    """One ``@vf.reward`` or ``@vf.metric`` value of the scored trace, logged as a metric."""

    def __init__(self, name: str, kind: str):
        self.__name__, self.kind = name, kind

    def __call__(self, vf_task: Any, messages: list[dict[str, Any]], state: EpisodeState) -> float | None:
        trace = _scores(vf_task, messages, state)
        if self.kind == "reward":
            value = trace.rewards.get(self.__name__)
            return None if value is None else float(value.score)
        value = trace.metrics.get(self.__name__)
        return None if value is None else float(value)


class VerifiersEnv(ToolEnv):
    """A verifiers taskset, scored by its own task rewards, as a toolgym environment.

    Args:
        taskset: The train split's taskset: a ``vf.Taskset`` instance, a ``Taskset`` subclass or
            factory (or its ``"package.module:Name"`` path), or an installed verifiers taskset id.
        taskset_kwargs: Config fields (for a ``Taskset`` subclass) or factory arguments.
        eval_taskset: The eval split's taskset (same forms); without it the eval split is refused.
        num_tasks: Tasks taken from each taskset (required for an infinite taskset).
        reward_bounds: Final reward range, when the task's weighted rewards are not within [0, 1].
        tools: toolgym tools offered to the model.
        **kwargs: :class:`~toolgym.envs.base.ToolEnv` arguments.
    """

    default_max_turns = 4
    blocking_rubric = True  # verifiers scores with async code run to completion on a private loop

    def __init__(self, *, taskset: Any, taskset_kwargs: dict[str, Any] | None = None, eval_taskset: Any = None,
                 num_tasks: int | None = None, reward_bounds: Sequence[float] | None = None,
                 tools: Sequence[Tool | Callable[..., Any]] = (), **kwargs: Any):
        import_verifiers()  # fail early, with the install hint, when verifiers is missing
        self._tasksets = {"train": taskset, "eval": eval_taskset}
        self._taskset_kwargs = dict(taskset_kwargs or {})
        self.num_tasks = num_tasks
        self._extra_tools = list(tools)
        self.vf_tasks: dict[str, Any] = {}
        super().__init__(**kwargs)
        if reward_bounds is not None:
            self.reward_bounds = (float(reward_bounds[0]), float(reward_bounds[1]))

    # ---- ToolEnv hooks -----------------------------------------------------------------------
    def load_tasks(self, split: str) -> ListTasks:
        spec = self._tasksets.get(split)
        if spec is None:
            raise ConfigError(f"no verifiers taskset for split {split!r}; pass "
                              f"{'eval_taskset' if split == 'eval' else 'taskset'}=")
        taskset = self._build_taskset(spec)
        if type(taskset).toolsets(taskset.config):
            raise ConfigError(f"{type(taskset).__name__} declares verifiers toolsets (MCP servers); they are not "
                              "bridged: offer toolgym tools with tools= instead")
        if not taskset.bounded and self.num_tasks is None:
            raise ConfigError(f"{type(taskset).__name__} is infinite: set num_tasks")
        view = taskset.take(self.num_tasks) if self.num_tasks is not None else taskset
        tasks = []
        for index, vf_task in enumerate(view):
            self._check_supported(vf_task)
            task_id = vf_task.data.id or f"{split}-{index}"
            if task_id in self.vf_tasks:
                raise ConfigError(f"two verifiers tasks share the id {task_id!r}")
            self.vf_tasks[task_id] = vf_task
            answer = getattr(vf_task.data, "answer", None)
            tasks.append(Task(id=task_id, prompt=vf_task.data.prompt_text, split=split,
                              answer=None if answer is None else str(answer), metadata={"vf_index": index}))
        return ListTasks(tasks)

    def make_tools(self) -> list[Tool | Any]:
        return list(self._extra_tools)

    def make_rubric(self) -> Rubric:
        first = next(iter(self.vf_tasks.values()), None)
        signals = []
        if first is not None:
            signals = [(VerifiersSignal(fn.__name__, kind), 0.0)
                       for kind in ("reward", "metric") for fn in first.hooks(kind)]
        return Rubric([verifiers_reward, *signals])

    def initial_messages(self, task: Task) -> list[dict[str, Any]]:
        data = self.vf_tasks[task.id].data
        system = data.system_prompt or self.system_prompt
        head = [{"role": "system", "content": system}] if system else []
        if isinstance(data.prompt, list):
            return head + [m.model_dump(exclude_none=True) for m in data.prompt]
        return head + [{"role": "user", "content": task.prompt}]

    def rubric_inputs(self, state: EpisodeState) -> dict[str, Any]:
        return {**super().rubric_inputs(state), "vf_task": self.vf_tasks[state.task.id]}

    # ---- helpers -----------------------------------------------------------------------------
    def _build_taskset(self, spec: Any) -> Any:
        vf = import_verifiers()
        if isinstance(spec, vf.Taskset):
            return spec
        if isinstance(spec, str) and ":" not in spec:  # an installed verifiers taskset id
            from verifiers.v1.utils.loaders import load_taskset

            return load_taskset(vf.TasksetConfig(id=spec, **self._taskset_kwargs))
        factory = resolve(spec)
        if isinstance(factory, type) and issubclass(factory, vf.Taskset):
            from verifiers.v1.utils.generic import concrete_type

            config_type = concrete_type(factory, vf.TasksetConfig) or vf.TasksetConfig
            return factory(config_type(**self._taskset_kwargs))
        taskset = factory(**self._taskset_kwargs)
        if not isinstance(taskset, vf.Taskset):
            raise ConfigError(f"{spec!r} returned {type(taskset).__name__}, not a verifiers Taskset")
        return taskset

    def _check_supported(self, vf_task: Any) -> None:
        name = type(vf_task).__name__
        if getattr(vf_task, "NEEDS_CONTAINER", False):
            raise ConfigError(f"verifiers task {name} needs a container, which this adapter does not provide")
        if vf_task.config.judges:
            raise ConfigError(f"verifiers task {name} uses judges (model calls); they are not supported")
