"""Train on toolgym environments with TRL's ``GRPOTrainer`` (TRL 1.16, where both hooks are experimental).

Two ways in, both scored by the environment's own rubric:

* ``environment_factory=environment_factory(env_id)``: TRL's tool loop drives the episode. TRL
  makes one instance per rollout, calls ``reset(**row)`` with the dataset row, exposes every public
  method as a tool (schema from type hints and Google docstring) and runs the tool calls it parses
  from the model's turns. The instance runs them through the toolgym env's own :class:`Tool`
  objects, with the hidden arguments filled from the episode, and records them on the episode.
  TRL's optional ``get_reward()`` takes no arguments and never sees the completion, so it cannot
  grade a final answer: the reward comes from :func:`toolgym_reward` in ``reward_funcs``, which TRL
  calls with the completions and the environment instances.
* ``rollout_func=make_rollout_func(env_id)``: toolgym's :class:`RolloutWorker` runs whole episodes
  token-exactly (tools run concurrently, the env's reply tokens are appended verbatim) on an
  :class:`HFEngine` sharing the trainer's model, and returns ``env_mask`` so TRL leaves the tool and
  template tokens out of its loss. Each completion's toolgym return reaches :func:`toolgym_reward`
  as the ``episode_reward`` column.

:func:`toolgym_dataset` builds the prompt dataset (chat messages plus ``task_id``) for either way,
and :func:`prepare_tokenizer` gives a Hermes-style tokenizer that TRL does not know a response
parser, so TRL can read its ``<tool_call>`` blocks.
"""

from __future__ import annotations

import copy
import inspect
import math
import typing
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import toolgym
from toolgym.envs.base import ToolEnv
from toolgym.envs.parsing import ToolCall
from toolgym.envs.report import MALFORMED_KINDS
from toolgym.envs.tools import Tool, ToolResult
from toolgym.errors import ConfigError, EnvError
from toolgym.rollouts.engines.base import Engine
from toolgym.rollouts.records import Trajectory
from toolgym.rollouts.worker import RolloutConfig, RolloutRequest, RolloutWorker
from toolgym.verifiers.rubric import Score

Messages = list[dict[str, Any]]
_RESERVED = ("reset", "get_reward")  # method names TRL treats specially


def _make_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> ToolEnv:
    env = toolgym.make(env_id, **(env_kwargs or {})).unwrapped
    if not isinstance(env, ToolEnv):
        raise ConfigError(f"{env_id} is not a toolgym ToolEnv (got {type(env).__name__})")
    return env


# ---- the dataset -------------------------------------------------------------------------------
def toolgym_dataset(env_id: str, split: str = "train", n: int | None = None, *,
                    env_kwargs: dict[str, Any] | None = None) -> Any:
    """The first ``n`` tasks of a split as a ``datasets.Dataset`` TRL consumes.

    Columns: ``prompt`` (the env's opening chat: system prompt and task) and ``task_id`` (TRL
    passes it to ``reset`` and to reward functions, so every rollout is matched to its task).

    Example:
        >>> ds = toolgym_dataset("toolgym/Arithmetic-v0", "eval", 2, env_kwargs={"difficulty": 1})
        >>> ds.column_names, ds[0]["task_id"], ds[0]["prompt"][-1]["role"]
        (['prompt', 'task_id'], 'arith-eval-0', 'user')
    """
    from datasets import Dataset

    env = _make_env(env_id, {**(env_kwargs or {}), "split": split})
    try:
        count = len(env.tasks) if n is None else min(n, len(env.tasks))
        tasks = [env.tasks[i] for i in range(count)]
        rows = {"prompt": [env.initial_messages(t) for t in tasks], "task_id": [t.id for t in tasks]}
    finally:
        env.close()
    return Dataset.from_dict(rows)


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Set a Qwen/Hermes response parser on a tokenizer whose chat template TRL does not recognise.

    TRL reads tool calls with ``tokenizer.parse_response`` and only knows the parsers of templates
    it ships. A template that writes ``<|im_start|>assistant`` turns with ``<tool_call>`` JSON blocks
    (Qwen, Hermes, toolgym's tiny model) parses like Qwen3. Other tokenizers are left as they are.
    """
    from trl.chat_template_utils import qwen3_template

    template = tokenizer.chat_template or ""
    known = getattr(tokenizer, "response_template", None) or getattr(tokenizer, "response_schema", None)
    if not known and "<tool_call>" in template and "<|im_start|>assistant" in template:
        tokenizer.response_template = qwen3_template
    return tokenizer


# ---- environment_factory -------------------------------------------------------------------------
class TRLToolEnv:
    """A toolgym env in the shape TRL's ``environment_factory`` expects.

    Subclasses made by :func:`environment_factory` add one public method per tool; everything
    else here is private, because TRL exposes every public method to the model.
    """

    env_id: ClassVar[str] = ""
    env_kwargs: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        self._env = _make_env(self.env_id, self.env_kwargs)
        self._score: Score | None = None

    @property
    def env(self) -> ToolEnv:
        """The toolgym env this instance drives (a property, so TRL does not list it as a tool)."""
        return self._env

    def reset(self, **row: Any) -> str | None:
        """Start the episode of the row's task; without a ``task_id`` pick one and return its text."""
        self._score = None
        options = {"task_id": row["task_id"]} if row.get("task_id") is not None else None
        messages, _ = self._env.reset(options=options)
        if options is not None:
            return None  # the dataset row already holds the env's opening chat
        return "\n\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))

    def _context(self) -> dict[str, Any]:
        # The hidden-argument lookup of ToolEnv: state, task, env and the episode's resources.
        state = self._state()
        return {"state": state, "task": state.task, "env": self._env, **state.resources}

    def _state(self) -> Any:
        if self._env.state is None:
            raise EnvError("call reset() before calling a tool")
        return self._env.state

    def _record(self, name: str, arguments: dict[str, Any], result: ToolResult) -> str:
        state = self._state()
        state.calls.append(ToolCall(name=name, arguments=arguments, id=f"call_{len(state.calls)}"))
        state.tool_errors += int(not result.ok)
        state.malformed_calls += int(result.error in MALFORMED_KINDS)
        return result.content

    def _call(self, name: str, arguments: dict[str, Any]) -> str:
        return self._record(name, arguments, self._env.tools[name].call_sync(arguments, self._context()))

    async def _acall(self, name: str, arguments: dict[str, Any]) -> str:
        return self._record(name, arguments, await self._env.tools[name].call(arguments, self._context()))

    def _finish(self, completion: Messages) -> Score | None:
        """Append TRL's turns to the episode and score it with the rubric (once per episode)."""
        if self._score is None and self._env.state is not None:
            state = self._env.state
            state.messages.extend(copy.deepcopy(completion))
            state.turn += sum(m.get("role") == "assistant" for m in completion)
            state.done = True
            inputs = {**self._env.rubric_inputs(state), "turn_calls": [], "turn_results": []}
            try:
                self._score = self._env.rubric.score(**inputs)
            except Exception as exc:  # a broken verifier makes the rollout unscorable, not the batch fail
                self._score = Score(0.0, {}, f"{type(exc).__name__}: {exc}")
        return self._score


def _tool_docstring(tool: Tool, params: Iterable[str]) -> str:
    props = tool.parameters["properties"]
    lines = [tool.description or f"Call the {tool.name} tool."]
    args = [f"    {p}: {props[p].get('description') or f'The {p} argument.'}" for p in params]
    return "\n".join(lines + ([""] + ["Args:"] + args if args else []))


def _tool_method(tool: Tool) -> Callable[..., Any]:
    """A method whose signature, hints and docstring give TRL the tool's visible schema."""
    if tool.is_async or tool.timeout is not None:  # keep the tool's timeout: run on TRL's event loop
        async def method(self: TRLToolEnv, **arguments: Any) -> str:
            return await self._acall(tool.name, arguments)
    else:
        def method(self: TRLToolEnv, **arguments: Any) -> str:
            return self._call(tool.name, arguments)

    hints = typing.get_type_hints(tool.fn)
    visible = [p for p in inspect.signature(tool.fn).parameters.values()
               if p.name not in tool.hidden and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    params = [p.replace(kind=p.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation)) for p in visible]
    # ``self`` without a hint is how transformers recognises a method's receiver.
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = inspect.Signature([self_param, *params], return_annotation=str)  # type: ignore[attr-defined]
    method.__annotations__ = {p.name: p.annotation for p in params} | {"return": str}
    method.__doc__ = _tool_docstring(tool, [p.name for p in params])
    method.__name__ = method.__qualname__ = tool.name
    return method


def environment_factory(env_id: str, **env_kwargs: Any) -> type[TRLToolEnv]:
    """A class TRL can use as ``environment_factory``: each instance wraps one toolgym env.

    Its public methods are the env's tools (hidden arguments removed); ``reset(**row)`` starts the
    row's task. Pair it with ``reward_funcs=[toolgym_reward]``.

    Example:
        >>> Env = environment_factory("toolgym/Arithmetic-v0", difficulty=1)
        >>> env = Env()
        >>> env.reset(task_id="arith-train-0") is None, env.calculator(expression="6 * 7")
        (True, '42')
    """
    probe = _make_env(env_id, env_kwargs)
    try:
        tools = list(probe.tools.values())
        name = type(probe).__name__
    finally:
        probe.close()
    clash = [t.name for t in tools if t.name in _RESERVED or t.name.startswith("_") or hasattr(TRLToolEnv, t.name)]
    if clash:
        raise ConfigError(f"tool name(s) {clash} clash with the methods TRL reserves; rename the tool(s)")
    members: dict[str, Any] = {t.name: _tool_method(t) for t in tools}
    members |= {"env_id": env_id, "env_kwargs": dict(env_kwargs), "__doc__": f"{env_id} for TRL's tool loop."}
    return type(f"{name}ForTRL", (TRLToolEnv,), members)


# ---- rewards -------------------------------------------------------------------------------------
def toolgym_reward(completions: Sequence[Any], environments: Sequence[Any] | None = None,
                   episode_reward: Sequence[float | None] | None = None,
                   rubric: Sequence[dict[str, float | None]] | None = None,
                   log_metric: Callable[[str, float], None] | None = None, **_: Any) -> list[float | None]:
    """TRL reward function: the toolgym rubric's reward of each rollout, for either way in.

    With ``environment_factory`` TRL passes the environment instances: each appends its turns to
    the episode and scores it. With ``make_rollout_func`` the rollout function already scored the
    episode and passes ``episode_reward`` (and ``rubric``) per completion. An unscorable rollout (a
    verifier or the episode failed) gets ``None``: TRL leaves it out of the group baseline. Each
    rubric component's mean is logged as ``toolgym/<name>``.
    """
    if episode_reward is not None:
        rewards = list(episode_reward)
        breakdowns = list(rubric or [])
    elif environments is not None:
        scores = [env._finish(c) for env, c in zip(environments, completions, strict=True)]
        rewards = [None if s is None or s.error else s.reward for s in scores]
        breakdowns = [dict(s.breakdown) if s is not None else {} for s in scores]
    else:
        raise ConfigError("toolgym_reward needs environment_factory=environment_factory(...) or "
                          "rollout_func=make_rollout_func(...) on the trainer")
    if log_metric is not None:
        _log_breakdown(breakdowns, log_metric)
    return rewards


def _log_breakdown(breakdowns: Sequence[dict[str, float | None]], log_metric: Callable[[str, float], None]) -> None:
    values: dict[str, list[float]] = defaultdict(list)
    for b in breakdowns:
        for k, v in b.items():
            if v is not None and math.isfinite(v):
                values[k].append(float(v))
    for k, vs in values.items():
        log_metric(f"toolgym/{k}", sum(vs) / len(vs))


# ---- rollout_func --------------------------------------------------------------------------------
def _prompt_key(messages: Messages) -> tuple[tuple[str, str], ...]:
    # Datasets add missing keys as None when they store messages: compare role and content only.
    return tuple((str(m.get("role")), str(m.get("content") or "")) for m in messages)


def trajectory_outputs(trajectories: Sequence[Trajectory], end_id: int) -> dict[str, list[Any]]:
    """What a TRL ``rollout_func`` returns for toolgym trajectories (one per prompt, in order).

    ``prompt_ids``/``completion_ids``/``logprobs`` split each trajectory at its prompt;
    ``env_mask`` is its loss mask (0 on tool and template tokens); ``episode_reward`` (None for a
    failed episode) and ``rubric`` reach :func:`toolgym_reward`. ``end_id`` stands in for the
    completion of an episode that failed before generating, with mask 0.

    Example:
        >>> t = Trajectory(env_id="e", task_id="t", token_ids=[5, 6, 7, 8], loss_mask=[0, 1, 0, 1],
        ...                logprobs=[0.0, -0.5, 0.0, -0.2], prompt_len=1, reward=1.0)
        >>> out = trajectory_outputs([t], end_id=2)
        >>> out["completion_ids"], out["env_mask"], out["episode_reward"]
        ([[6, 7, 8]], [[1, 0, 1]], [1.0])
    """
    out: dict[str, list[Any]] = {k: [] for k in ("prompt_ids", "completion_ids", "logprobs", "env_mask",
                                                 "episode_reward", "rubric")}
    for t in trajectories:
        p = t.prompt_len
        completion, mask, logprobs = t.token_ids[p:], t.loss_mask[p:], t.logprobs[p:]
        if not completion:  # failed before generating: one untrained token keeps TRL's shapes valid
            completion, mask, logprobs = [end_id], [0], [0.0]
        out["prompt_ids"].append(t.token_ids[:p] or [end_id])
        out["completion_ids"].append(completion)
        out["logprobs"].append(logprobs)
        out["env_mask"].append(mask)
        out["episode_reward"].append(None if t.error is not None else float(t.reward))
        out["rubric"].append(dict(t.rubric))
    return out


class ToolgymRollouts:
    """TRL ``rollout_func``: whole toolgym episodes, token-exact, with ``env_mask`` (see the module doc).

    Args:
        env_id: The environment.
        env_kwargs: Its constructor arguments.
        config: Budgets and sampling. ``None`` takes them from the trainer: temperature, top-p,
            top-k, and ``max_completion_length`` new tokens per turn.
        engine: Generation backend; ``None`` serves the trainer's own model with :class:`HFEngine`.
    """

    def __init__(self, env_id: str, *, env_kwargs: dict[str, Any] | None = None,
                 config: RolloutConfig | None = None, engine: Engine | None = None):
        if config is not None and config.drift_policy != "keep":
            raise ConfigError("TRL takes one completion per prompt: use drift_policy='keep'")
        self.env_id = env_id
        self.env_kwargs = dict(env_kwargs or {})
        self.config = config
        self.engine = engine
        self.last_trajectories: list[Trajectory] = []
        self._worker: RolloutWorker | None = None
        self._tasks: dict[int, dict[tuple[tuple[str, str], ...], str]] = {}

    def __call__(self, prompts: list[Messages], trainer: Any) -> dict[str, list[Any]]:
        task_ids = self._task_ids(prompts, trainer)
        worker = self._get_worker(trainer, len(prompts))
        requests = [RolloutRequest({"task_id": tid}, group_size=1, group_id=tid, sample_offset=i)
                    for i, tid in enumerate(task_ids)]
        trajectories = worker.run_sync(requests)
        if len(trajectories) != len(prompts):
            raise EnvError(f"{len(trajectories)} trajectories for {len(prompts)} prompts")
        self.last_trajectories = trajectories
        return trajectory_outputs(trajectories, trainer.processing_class.eos_token_id)

    def _task_ids(self, prompts: list[Messages], trainer: Any) -> list[str]:
        """TRL hands over prompts only: find each one's task in the trainer's datasets."""
        tables = [self._table(ds) for ds in (trainer.train_dataset, trainer.eval_dataset) if ds is not None]
        ids = []
        for prompt in prompts:
            key = _prompt_key(prompt)
            found = next((table[key] for table in tables if key in table), None)
            if found is None:
                raise ConfigError("a prompt is not in the trainer's datasets with a task_id; build them with "
                                  "toolgym_dataset()")
            ids.append(found)
        return ids

    def _table(self, dataset: Any) -> dict[tuple[tuple[str, str], ...], str]:
        if id(dataset) not in self._tasks:
            columns = getattr(dataset, "column_names", None) or []
            if "task_id" not in columns or not hasattr(dataset, "__len__"):
                self._tasks[id(dataset)] = {}
            else:
                self._tasks[id(dataset)] = {_prompt_key(p): str(t)
                                            for p, t in zip(dataset["prompt"], dataset["task_id"], strict=True)}
        return self._tasks[id(dataset)]

    def _get_worker(self, trainer: Any, batch: int) -> RolloutWorker:
        if self._worker is None:
            engine = self.engine or self._hf_engine(trainer)
            config = self.config or RolloutConfig(
                max_new_tokens=trainer.max_completion_length, temperature=trainer.temperature,
                top_p=trainer.top_p, top_k=trainer.top_k or 0, max_concurrency=max(batch, 1))
            self._worker = RolloutWorker(engine, lambda: _make_env(self.env_id, self.env_kwargs), config,
                                         env_id=self.env_id)
        return self._worker

    @staticmethod
    def _hf_engine(trainer: Any) -> Engine:
        from toolgym.rollouts.engines.hf import HFEngine

        model = trainer.accelerator.unwrap_model(trainer.model)
        return HFEngine(model, trainer.processing_class)

    def close(self) -> None:
        """Close pooled environments and the engine this object made."""
        if self._worker is not None:
            self._worker.close()
            if self.engine is None:
                getattr(self._worker.engine, "close", lambda: None)()
        self._worker = None


def make_rollout_func(env_id: str, *, env_kwargs: dict[str, Any] | None = None,
                      config: RolloutConfig | None = None, engine: Engine | None = None) -> ToolgymRollouts:
    """A TRL ``rollout_func`` running toolgym episodes; pair it with ``reward_funcs=[toolgym_reward]``.

    See :class:`ToolgymRollouts` for the arguments.
    """
    return ToolgymRollouts(env_id, env_kwargs=env_kwargs, config=config, engine=engine)
