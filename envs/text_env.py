"""Text environments (string in, string out) as toolgym environments.

GEM environments and text-only Gymnasium environments share one contract:
``reset(seed=...) -> (observation, info)`` and ``step(action) -> (observation, reward, terminated,
truncated, info)`` where observations and actions are strings. :class:`TextEnv` puts any such
environment behind the :class:`~toolgym.envs.base.ToolEnv` API, so rollout workers, trainers and
``toolgym check`` use it like any other env:

- **Tasks are seeds.** Task ``i`` of a split resets the wrapped env with seed
  ``seed_offsets[split] + i`` (train and eval seeds never overlap), so a task id names one
  reproducible episode. The task's prompt is the wrapped env's first observation.
- **Chat.** The first observation opens the chat as the user message; each assistant turn's text
  goes unchanged to the wrapped env's ``step``, whose observation comes back as the next user
  message. Tags the wrapped env parses itself (GEM's ``\\boxed{}`` answers, its ``<python>`` or
  ``<search>`` tools) stay inside the wrapped env.
- **toolgym's own call syntax** (``<tool_call>`` blocks, structured ``tool_calls``) is answered by
  toolgym: by the toolgym tools given in ``tools=``, or with an error tool message when there is
  no such tool, exactly as in any toolgym env. ``intercept_tool_calls=False`` sends those turns to
  the wrapped env as text too (for wrapped envs that parse ``<tool_call>`` themselves).
- **Rewards.** ``reward_mode="turn"`` (default): each step's reward is the wrapped env's reward
  for that step, so per-turn credit reaches the learner; the final (rubric) reward is 0 and the
  episode's return is logged as ``info["rubric"]["episode_return"]``. ``reward_mode="final"``: the
  wrapped rewards are summed and paid as the final reward on the last step. Either way a
  trajectory's return is the sum of the wrapped env's rewards; the ``reward_bounds`` argument
  declares its range (``env.return_bounds``). ``env.reward_bounds`` is the final reward's range,
  as in every toolgym env: that range in ``"final"`` mode, ``(0, 0)`` in ``"turn"`` mode. The
  conformance checks score final rewards, so their oracle and reward-hacking checks test the
  wrapped env in ``"final"`` mode (``run_checks(env_id, reward_mode="final")``).
- **Episode end.** The wrapped env's ``terminated``/``truncated`` pass through (truncation reason
  ``"env"``), except that ``terminated`` wins when both are set (GEM's single-turn envs set both);
  the raw flags are in ``info["env_terminated"]``/``info["env_truncated"]``. toolgym's turn and
  token budgets truncate as usual.
- **Failures are data.** An exception in the wrapped ``step`` ends the episode as truncated
  (reason ``"env_error"``) with an ``EnvError`` record in ``info["error"]``; the wrapped env is
  rebuilt at the next reset. An exception in ``reset`` raises ``EnvError``.

Registering a wrapped env takes an importable factory (a class or function) and its kwargs::

    register_text_env("me/Guess-v0", "gem:make", text_env_kwargs={"env_id": "game:GuessTheNumber-v0-easy"},
                      max_turns=4)

Note that GEM's ``reset(seed)`` seeds Python's global ``random`` and NumPy's global generator, and
some GEM envs draw from them in ``step``; keep ``threaded_step=False`` (the default) so episodes
of one process step one at a time and stay reproducible.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from toolgym.envs.base import EpisodeState, ToolEnv
from toolgym.envs.parsing import parse_action
from toolgym.envs.report import TurnReport
from toolgym.envs.task import Task
from toolgym.envs.tools import Tool
from toolgym.errors import ConfigError, EnvError, ErrorRecord
from toolgym.registry import EnvSpec, register
from toolgym.verifiers.rubric import Rubric

ENTRY_POINT = "toolgym.envs.text_env:TextEnv"
SEED_OFFSETS = {"train": 0, "eval": 1_000_000_000}
REWARD_MODES = ("turn", "final")
OBSERVATION_ROLES = ("user", "tool")


@runtime_checkable
class TextEnvLike(Protocol):
    """What :class:`TextEnv` needs from the wrapped env (GEM's ``Env`` API); ``close()`` is optional."""

    def reset(self, *, seed: int | None = None) -> tuple[str, dict[str, Any]]: ...

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]: ...


def resolve(target: str | Callable[..., Any]) -> Callable[..., Any]:
    """The callable behind ``"package.module:Name"`` (``Name`` may be dotted); callables pass through.

    Example:
        >>> resolve("json:dumps")([1])
        '[1]'
    """
    if callable(target):
        return target
    if not isinstance(target, str) or ":" not in target:
        raise ConfigError(f"expected a callable or 'package.module:Name', got {target!r}")
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {target!r}: {type(exc).__name__}: {exc}") from exc
    if not callable(obj):
        raise ConfigError(f"{target!r} is not callable")
    return obj


class SeedTasks:
    """Tasks of one split, each a seed of the wrapped env; prompts are filled in at reset.

    Example:
        >>> tasks = SeedTasks("eval", 3, offset=1000)
        >>> tasks[2].id, tasks[2].metadata["seed"], tasks.by_id("eval-1").metadata["seed"]
        ('eval-2', 1002, 1001)
    """

    def __init__(self, split: str, size: int, offset: int):
        self.split, self.size, self.offset = split, size, offset

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Task:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return Task(id=f"{self.split}-{index}", prompt="", split=self.split, metadata={"seed": self.offset + index})

    def by_id(self, task_id: str) -> Task:
        split, _, index = task_id.rpartition("-")
        if split != self.split or not index.isdigit():
            raise KeyError(task_id)
        return self[int(index)]


def episode_return(state: EpisodeState) -> float:
    """The sum of the wrapped env's rewards so far in this episode."""
    return float(state.scratch.get("return", 0.0))


class TextEnv(ToolEnv):
    """A text environment (GEM-style ``reset``/``step`` on strings) as a toolgym environment.

    Args:
        text_env: Factory of the wrapped env: a class, a function, or ``"package.module:Name"``.
        text_env_kwargs: Keyword arguments for the factory.
        num_tasks: Tasks (seeds) per split.
        seed_offsets: First seed of each split (default: train 0, eval 10**9).
        reward_mode: ``"turn"`` (wrapped rewards as turn rewards) or ``"final"`` (their sum as the
            final reward).
        reward_bounds: The range of an episode's return (sum of the wrapped rewards).
        observation_role: Role of the wrapped env's observations in the chat: ``"user"`` or ``"tool"``.
        intercept_tool_calls: Answer toolgym's tool-call syntax with toolgym tools (``True``) or
            pass it to the wrapped env as text (``False``).
        threaded_step: Run the wrapped ``step`` on a worker thread in ``astep`` (for slow envs that
            keep no global state).
        tools: toolgym tools offered beside the wrapped env.
        demonstration: ``fn(task) -> list[str]`` (or its import path): assistant turns that earn
            the maximum return on ``task``; played through a fresh wrapped env to build the chat.
        **kwargs: :class:`~toolgym.envs.base.ToolEnv` arguments (``max_turns``, ``split``, ``system_prompt`` ...).

    Example:
        >>> class Echo:
        ...     def reset(self, seed=None):
        ...         return f"Say {seed}.", {}
        ...     def step(self, action):
        ...         return "", float(action.strip() == "7"), True, False, {}
        >>> env = TextEnv(text_env=Echo, seed_offsets={"train": 7})
        >>> obs, info = env.reset(options={"task_index": 0})
        >>> obs[-1]
        {'role': 'user', 'content': 'Say 7.'}
        >>> env.step("7")[1:4]
        (1.0, True, False)
    """

    def __init__(self, *, text_env: str | Callable[..., Any], text_env_kwargs: dict[str, Any] | None = None,
                 num_tasks: int = 10_000, seed_offsets: dict[str, int] | None = None, reward_mode: str = "turn",
                 reward_bounds: Sequence[float] = (0.0, 1.0), observation_role: str = "user",
                 intercept_tool_calls: bool = True, threaded_step: bool = False,
                 tools: Sequence[Tool | Callable[..., Any]] = (),
                 demonstration: str | Callable[[Task], list[str]] | None = None, **kwargs: Any):
        if reward_mode not in REWARD_MODES:
            raise ConfigError(f"reward_mode must be one of {REWARD_MODES}, got {reward_mode!r}")
        if observation_role not in OBSERVATION_ROLES:
            raise ConfigError(f"observation_role must be one of {OBSERVATION_ROLES}, got {observation_role!r}")
        lo, hi = (float(b) for b in reward_bounds)
        if not lo <= hi:
            raise ConfigError(f"reward_bounds must be (low, high) with low <= high, got {tuple(reward_bounds)}")
        self.text_env_spec = text_env if isinstance(text_env, str) else getattr(text_env, "__qualname__", "")
        self._factory = resolve(text_env)
        self._factory_kwargs = dict(text_env_kwargs or {})
        self.num_tasks = int(num_tasks)
        self.seed_offsets = {**SEED_OFFSETS, **(seed_offsets or {})}
        self.reward_mode = reward_mode
        self.observation_role = observation_role
        self.intercept_tool_calls = intercept_tool_calls
        self.threaded_step = threaded_step
        self._extra_tools = list(tools)
        self._demonstration = resolve(demonstration) if demonstration is not None else None
        self.wrapped: Any = self._new_wrapped()
        self._rebuild = False  # set when the wrapped env raised: rebuilt at the next reset
        super().__init__(**kwargs)
        self.return_bounds = (lo, hi)
        if reward_mode == "final":  # otherwise the rubric's (0, 0): nothing is paid as a final reward
            self.reward_bounds = (lo, hi)

    # ---- ToolEnv hooks -----------------------------------------------------------------------
    def load_tasks(self, split: str) -> SeedTasks:
        if split not in self.seed_offsets:
            raise ConfigError(f"no seed offset for split {split!r}; known splits: {', '.join(self.seed_offsets)}")
        return SeedTasks(split, self.num_tasks, self.seed_offsets[split])

    def make_tools(self) -> list[Tool | Any]:
        return list(self._extra_tools)

    def make_rubric(self) -> Rubric:
        # The return is the final reward only in "final" mode; in "turn" mode it was already paid
        # turn by turn, so it is a logged metric (weight 0) and nothing is counted twice.
        return Rubric([(episode_return, 1.0 if self.reward_mode == "final" else 0.0)])

    def demonstration(self, task: Task) -> list[dict[str, Any]] | None:
        """The chat of the configured demonstration's turns, played through a fresh wrapped env."""
        if self._demonstration is None:
            return None
        turns = list(self._demonstration(task))
        env = self._new_wrapped()
        try:
            obs, _ = env.reset(seed=self._seed_of(task))
            messages = self.initial_messages(dataclasses.replace(task, prompt=_text(obs)))
            for turn in turns:
                messages.append({"role": "assistant", "content": turn})
                obs, _, terminated, truncated, _ = env.step(turn)
                if terminated or truncated:
                    break
                messages.append(self._observation_message(_text(obs), len(messages)))
        finally:
            _close(env)
        return messages

    # ---- Gymnasium API -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        _, info = super().reset(seed=seed, options=options)
        state = self.state
        assert state is not None
        if self._rebuild:
            _close(self.wrapped)
            self.wrapped, self._rebuild = self._new_wrapped(), False
        task_seed = self._seed_of(state.task)
        try:
            obs, env_info = self.wrapped.reset(seed=task_seed)
            prompt = _text(obs)
        except Exception as exc:
            self._rebuild = True
            raise EnvError(f"the wrapped text env failed to reset with seed {task_seed}: "
                           f"{type(exc).__name__}: {exc}") from exc
        state.task = dataclasses.replace(state.task, prompt=prompt)
        state.messages = self.initial_messages(state.task)
        state.scratch.update({"return": 0.0, "seed": task_seed})
        info.update(seed=task_seed, env_info=dict(env_info or {}))
        return self._observation(), info

    def step(self, action: Any) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        if self._is_toolgym_turn(action):
            return super().step(action)
        text = self._begin_text_turn(action)
        return self._step_result(self._end_text_turn(*self._call_wrapped(text)))

    async def astep(self, action: Any) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        if self._is_toolgym_turn(action):
            return await super().astep(action)
        text = self._begin_text_turn(action)
        if self.threaded_step:
            result = await asyncio.to_thread(self._call_wrapped, text)
        else:
            result = self._call_wrapped(text)
        return self._step_result(self._end_text_turn(*result))

    def close(self) -> None:
        super().close()
        _close(self.wrapped)

    def __getstate__(self) -> dict[str, Any]:
        # The wrapped env may hold processes or sockets; reset() re-seeds it, so a fresh one built
        # from the factory plays the same episodes.
        return {**super().__getstate__(), "wrapped": None, "_rebuild": False}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.wrapped = self._new_wrapped()

    # ---- one text turn -----------------------------------------------------------------------
    def _is_toolgym_turn(self, action: Any) -> bool:
        """True when the turn calls toolgym tools (or tries to): toolgym answers it, not the wrapped env."""
        if not self.intercept_tool_calls:
            return False
        if isinstance(action, dict) and action.get("tool_calls"):
            return True
        return bool(parse_action(action, self.tool_format).calls)

    def _begin_text_turn(self, action: Any) -> str:
        self._begin_turn(action)  # validates the episode, records the assistant message and its tokens
        if isinstance(action, dict):
            text = action.get("content") or ""
            calls = action.get("tool_calls")
            if calls:  # passed through: render structured calls the way Hermes-style models write them
                text += "".join(f"<tool_call>{json.dumps(c.get('function', c), default=str)}</tool_call>"
                                for c in calls if isinstance(c, dict))
            return str(text)
        return action if isinstance(action, str) else str(action)

    def _call_wrapped(self, text: str) -> tuple[str, float, bool, bool, dict[str, Any], ErrorRecord | None]:
        """The wrapped env's step; an exception (or a malformed result) becomes an error record."""
        try:
            obs, reward, terminated, truncated, info = self.wrapped.step(text)
            reward = float(reward)
            if not math.isfinite(reward):
                raise EnvError(f"the wrapped text env returned a non-finite reward {reward}")
            return _text(obs), reward, bool(terminated), bool(truncated), dict(info or {}), None
        except Exception as exc:
            self._rebuild = True
            error = EnvError(f"the wrapped text env failed in step: {type(exc).__name__}: {exc}")
            return "", 0.0, False, True, {}, error.to_record()

    def _end_text_turn(self, obs: str, env_reward: float, terminated: bool, truncated: bool,
                       env_info: dict[str, Any], error: ErrorRecord | None) -> TurnReport:
        state = self.state
        assert state is not None
        state.turn += 1
        state.scratch["return"] = state.scratch.get("return", 0.0) + env_reward
        # Terminated wins: GEM's single-turn envs report both flags at once, and a terminal state
        # is what the learner needs to know (no bootstrapping past it).
        ended_by_env = terminated or truncated or error is not None
        report = TurnReport(task_id=state.task.id, turn=state.turn,
                            turn_reward=env_reward if self.reward_mode == "turn" else 0.0,
                            terminated=terminated, truncated=(truncated or error is not None) and not terminated,
                            error=error, extra={"env_reward": env_reward, "env_info": env_info,
                                                "env_terminated": terminated, "env_truncated": truncated})
        if report.truncated:
            report.truncated_reason = "env_error" if error is not None else "env"
        if obs or not (ended_by_env or self._out_of_budget(state)):  # the last observation ("You won") is kept
            state.messages.append(self._observation_message(obs, len(state.messages)))
        return self.finish_turn(report)

    def _out_of_budget(self, state: EpisodeState) -> bool:
        return state.turn >= self.max_turns or (self.max_tokens is not None and state.tokens >= self.max_tokens)

    # ---- helpers -----------------------------------------------------------------------------
    def _new_wrapped(self) -> Any:
        try:
            env = self._factory(**self._factory_kwargs)
        except Exception as exc:
            raise EnvError(f"could not build the wrapped text env {self.text_env_spec!r}: "
                           f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(env, TextEnvLike):
            raise EnvError(f"{self.text_env_spec!r} built {type(env).__name__}, which has no reset()/step()")
        return env

    def _observation_message(self, text: str, index: int) -> dict[str, Any]:
        if self.observation_role == "tool":
            return {"role": "tool", "tool_call_id": f"env_{index}", "name": "environment", "content": text}
        return {"role": "user", "content": text}

    @staticmethod
    def _seed_of(task: Task) -> int:
        seed = task.metadata.get("seed")
        if not isinstance(seed, int):
            raise EnvError(f"task {task.id!r} has no integer 'seed' in its metadata")
        return seed


def _text(obs: Any) -> str:
    if obs is None:
        return ""
    if not isinstance(obs, str):
        raise EnvError(f"the wrapped env's observation must be a string, got {type(obs).__name__}")
    return obs


def _close(env: Any) -> None:
    close = getattr(env, "close", None)
    if callable(close):
        try:
            close()
        except Exception:  # closing a broken env must not hide the error that broke it
            pass


def make_text_env(text_env: str | Callable[..., Any], **kwargs: Any) -> TextEnv:
    """A :class:`TextEnv` over ``text_env`` (a factory or its import path), without registering it.

    Example:
        >>> class Once:
        ...     def reset(self, seed=None):
        ...         return "Say hi.", {}
        ...     def step(self, action):
        ...         return "", float("hi" in action), True, False, {}
        >>> env = make_text_env(Once, max_turns=2)
        >>> _ = env.reset(seed=0)
        >>> env.step("hi")[1]
        1.0
    """
    return TextEnv(text_env=text_env, **kwargs)


def register_text_env(env_id: str, text_env: str | Callable[..., Any], *, pack: str = "toolgym",
                      **kwargs: Any) -> EnvSpec:
    """Register a wrapped text env under ``env_id`` (``toolgym.make`` and ``gymnasium.make`` then work).

    Equivalent to ``toolgym.register(env_id, entry_point="toolgym.envs.text_env:TextEnv",
    text_env=text_env, **kwargs)``. An import path keeps the registration printable and picklable.

    Example:
        >>> import toolgym
        >>> class Double:
        ...     def reset(self, seed=None):
        ...         self.n = seed % 50
        ...         return f"What is twice {self.n}?", {}
        ...     def step(self, action):
        ...         return "", float(action.strip() == str(2 * self.n)), True, False, {}
        >>> _ = register_text_env("demo/Double-v0", Double, num_tasks=100)
        >>> env = toolgym.make("demo/Double-v0").unwrapped
        >>> env.reset(options={"task_index": 21})[0][-1]["content"]
        'What is twice 21?'
        >>> env.step("42")[1]
        1.0
    """
    return register(env_id, entry_point=ENTRY_POINT, pack=pack, text_env=text_env, **kwargs)

