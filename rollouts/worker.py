"""The rollout worker: many tool-use episodes in flight at once, recorded token for token.

Each episode is its own asyncio task: it renders the opening chat, asks the engine for a
completion, hands the text to the environment (``env.astep``, whose tools run concurrently), appends
the environment's reply as tokens and repeats. While some episodes wait on tools, the others'
generation requests reach the engine and are batched together, so slow tools do not stall the
batch the way a lock-step loop (generate all, then run all tools) does.

Failures are data: a broken engine call, a hung tool or a crashing environment ends that episode
with a typed :class:`~toolgym.errors.ErrorRecord` (retried first when the error is retryable); the
rest of the batch completes. Budgets per episode: turns, new tokens per turn, total tokens, wall
time.

Example:
    >>> import toolgym
    >>> from transformers import AutoTokenizer
    >>> from toolgym.rollouts.tiny import tiny_model_path
    >>> from toolgym.rollouts.engines.fake import ScriptedEngine
    >>> tok = AutoTokenizer.from_pretrained(tiny_model_path())
    >>> engine = ScriptedEngine(tok, ["Answer: 1"])
    >>> worker = RolloutWorker(engine, lambda: toolgym.make("toolgym/Arithmetic-v0").unwrapped)
    >>> [t] = worker.run_sync([RolloutRequest({"task_index": 0})])
    >>> t.task_id, len(t.turns), t.error is None
    ('arith-train-0', 1, True)
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from toolgym.aio import run_in_new_thread
from toolgym.envs.report import ToolOutcome, TurnReport
from toolgym.errors import ConfigError, ErrorRecord, ModelError, OverlongPromptError, ToolError, ToolgymError
from toolgym.rollouts.engines.base import ChatPrompt, Completion, Engine, SamplingParams
from toolgym.rollouts.records import Cost, DriftEvent, Timings, ToolResultRecord, Trajectory, Turn
from toolgym.rollouts.tokens import ChatFormat, Segment, TokenTrajectory


@dataclass
class RolloutConfig:
    """Budgets, sampling and policies of a rollout worker.

    Args:
        max_turns: Assistant turns per episode (``None``: the env's default).
        max_new_tokens: New tokens per turn.
        max_total_tokens: Prompt plus all turns; the episode is truncated when it is reached.
        episode_timeout_s: Wall time per episode; past it the episode is truncated.
        step_timeout_s: Wall time of one environment step (its tool calls); past it the episode
            fails with a ``ToolError`` (a tool hung without its own timeout).
        generate_timeout_s: Wall time of one engine call; past it the call is a retryable ``ModelError``.
        temperature, top_p, top_k: Sampling (temperature >= 0, 0 = greedy; top_p in (0, 1];
            top_k >= 0, 0 or -1 = off); checked when the config is made (:meth:`check`).
        ignore_eos: Never stop a completion early (benchmarks).
        max_concurrency: Episodes in flight at once.
        max_retries: Re-runs of an episode that failed with a retryable error.
        drift_policy: ``"keep"`` or ``"split"`` (see :mod:`toolgym.rollouts.tokens`).
        drift_check: ``"text"``, ``"tokens"`` (also detect tokenisation drift) or ``"off"``.
        chat_template: Template overriding the tokenizer's.
        seed: Base seed for environment resets (episode ``i`` of a group uses ``seed + i``).
        sampling_seed: When set, every generate call gets its own seed derived from this, the task,
            the sample index, the attempt and the turn, so rollouts repeat exactly whatever the
            batching (engines that support per-request seeds: ``hf``, ``vllm``).
    """

    max_turns: int | None = None
    max_new_tokens: int = 256
    max_total_tokens: int = 4096
    episode_timeout_s: float | None = 600.0
    step_timeout_s: float | None = 300.0
    generate_timeout_s: float | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    ignore_eos: bool = False
    max_concurrency: int = 64
    max_retries: int = 2
    drift_policy: str = "keep"
    drift_check: str = "text"
    chat_template: str | None = None
    seed: int | None = None
    sampling_seed: int | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Reject sampling parameters and budgets no engine can honour, when the config is made.

        Raises at config time (``toolgym train rollout.temperature=-1`` exits before any model loads)
        instead of in the middle of a rollout, where each engine would fail its own way. ``top_k=-1``
        (vLLM's spelling of "off") is accepted and stored as 0, the one spelling every engine reads.

        Raises:
            ConfigError: A value is out of range; the message names the field and the valid range.

        Example:
            >>> RolloutConfig(temperature=-1)
            Traceback (most recent call last):
            ...
            toolgym.errors.ConfigError: rollout temperature must be >= 0 (0 = greedy), got -1
        """
        bad: list[str] = []
        # `not (x >= 0)` rather than `x < 0`: NaN fails every comparison and must be rejected too
        if not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            bad.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not (0 < self.top_p <= 1):
            bad.append(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.top_k < -1:
            bad.append(f"top_k must be >= 0 (0 or -1 = off), got {self.top_k}")
        for name in ("max_new_tokens", "max_total_tokens", "max_concurrency"):
            if getattr(self, name) < 1:
                bad.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_turns is not None and self.max_turns < 1:
            bad.append(f"max_turns must be >= 1 (or null: the env's default), got {self.max_turns}")
        if self.max_retries < 0:
            bad.append(f"max_retries must be >= 0, got {self.max_retries}")
        for name in ("episode_timeout_s", "step_timeout_s", "generate_timeout_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                bad.append(f"{name} must be > 0 (or null: no limit), got {value}")
        if bad:
            raise ConfigError("rollout " + "; ".join(bad))
        if self.top_k == -1:
            self.top_k = 0

    def sampling(self, max_tokens: int, seed: int | None = None) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, ignore_eos=self.ignore_eos, seed=seed)


def request_seed(base: int, *parts: Any) -> int:
    """A stable 63-bit seed from a base seed and the parts that identify one generate call.

    Example:
        >>> request_seed(0, "task-1", 0, 2) == request_seed(0, "task-1", 0, 2) != request_seed(0, "task-1", 1, 2)
        True
    """
    digest = hashlib.blake2b(repr((base, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass
class RolloutRequest:
    """``group_size`` episodes of one task.

    Args:
        task: Reset options naming the task: ``{"task_index": i}`` or ``{"task_id": "..."}``.
        group_size: Episodes (samples) of this task; they get ``sample_index`` 0..G-1.
        group_id: Groups samples for advantage estimation; defaults to the task id.
        sample_offset: First sample index (to add samples to a group later).
    """

    task: dict[str, Any]
    group_size: int = 1
    group_id: str = ""
    sample_offset: int = 0


class _Truncate(Exception):  # noqa: N818 - control flow, not an error
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class RolloutWorker:
    """Run episodes of an environment against an engine, concurrently.

    Args:
        engine: Any :class:`~toolgym.rollouts.engines.base.Engine`.
        env_fn: Returns a fresh :class:`~toolgym.envs.base.ToolEnv`; envs are pooled and reused
            between episodes (``reset`` starts a new episode), dropped after a failure.
        config: Budgets and policies.
        env_id: Recorded on trajectories when the env has no registry spec.
        model_version: Recorded in ``Trajectory.versions["model"]``.
        on_trajectory: Called with each finished trajectory (e.g. ``TrajectoryWriter.write``).
        skip: ``(task_id, sample_index)`` pairs already done (resuming); they are not run again.
    """

    def __init__(self, engine: Engine, env_fn: Callable[[], Any], config: RolloutConfig | None = None, *,
                 env_id: str = "", model_version: str = "",
                 on_trajectory: Callable[[Trajectory], None] | None = None,
                 skip: set[tuple[str, int]] | None = None):
        self.engine = engine
        self.env_fn = env_fn
        self.config = config or RolloutConfig()
        self.env_id = env_id
        self.model_version = model_version
        self.on_trajectory = on_trajectory
        self.skip = set(skip or ())
        self._pool: list[Any] = []

    async def run(self, requests: Sequence[RolloutRequest]) -> list[Trajectory]:
        """Run every episode of every request; returns trajectories in request/sample order."""
        sem = asyncio.Semaphore(self.config.max_concurrency)

        async def one(req: RolloutRequest, index: int) -> list[Trajectory]:
            async with sem:
                return await self.run_episode(req.task, sample_index=index, group_id=req.group_id)

        jobs = [one(r, r.sample_offset + i) for r in requests for i in range(r.group_size)]
        results = await asyncio.gather(*jobs)
        return [t for group in results for t in group]

    def run_sync(self, requests: Sequence[RolloutRequest]) -> list[Trajectory]:
        """:meth:`run` from synchronous code (also from inside a running loop, via a thread)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run(requests))
        return run_in_new_thread(self.run(requests))

    async def run_episode(self, task: dict[str, Any], *, sample_index: int = 0,
                          group_id: str = "") -> list[Trajectory]:
        """One episode (retried while it fails retryably); several trajectories if it was split."""
        trajectories: list[Trajectory] = []
        if "task_id" in task and (str(task["task_id"]), sample_index) in self.skip:
            return []
        for attempt in range(1, self.config.max_retries + 2):
            trajectories = await self._attempt(task, sample_index, group_id, attempt)
            if not trajectories:
                return []
            error = trajectories[-1].error
            if error is None or not error.retryable:
                break
        for t in trajectories:
            if self.on_trajectory is not None:
                self.on_trajectory(t)
        return trajectories

    async def _attempt(self, task: dict[str, Any], sample_index: int, group_id: str,
                       attempt: int) -> list[Trajectory]:
        try:
            env = self._pool.pop() if self._pool else self.env_fn()
            env = getattr(env, "unwrapped", env)  # Gymnasium wrappers do not forward ``astep``
        except Exception as exc:
            return [self._failed_before_start(task, sample_index, group_id, attempt, exc)]
        episode = _Episode(self, env, task, sample_index, group_id, attempt)
        trajectories = await episode.run()
        if episode.healthy:
            self._pool.append(env)
        else:
            _close_quietly(env)
        return trajectories

    def _failed_before_start(self, task: dict[str, Any], sample_index: int, group_id: str, attempt: int,
                             exc: BaseException) -> Trajectory:
        task_id = str(task.get("task_id", task.get("task_index", "")))
        return Trajectory(env_id=self.env_id, task_id=task_id, group_id=group_id or task_id,
                          sample_index=sample_index, error=ErrorRecord.from_exception(exc, "env"), attempts=attempt)

    def close(self) -> None:
        """Close pooled environments."""
        while self._pool:
            _close_quietly(self._pool.pop())


def _close_quietly(env: Any) -> None:
    try:
        env.close()
    except Exception:  # closing a broken env must not hide the error that broke it
        pass


@dataclass
class _SegmentTurns:
    segment: Segment | None = None
    turns: list[Turn] = field(default_factory=list)


class _Episode:
    """One attempt at one episode: the turn loop and its bookkeeping."""

    def __init__(self, worker: RolloutWorker, env: Any, task: dict[str, Any], sample_index: int,
                 group_id: str, attempt: int):
        self.worker, self.env, self.task_opts = worker, env, task
        self.cfg = worker.config
        self.sample_index, self.group_id, self.attempt = sample_index, group_id, attempt
        self.healthy = True
        self.messages: list[dict[str, Any]] = []
        self.tools: list[dict[str, Any]] = []
        self.segments: list[_SegmentTurns] = [_SegmentTurns()]
        self.drift: list[DriftEvent] = []
        self.cost = Cost()
        self.timings = Timings(started_at=time.time())
        self.final: TurnReport | None = None  # the report of the step that ended the episode
        self.turn_rewards: list[float] = []
        self.exact = True
        self.error: ErrorRecord | None = None
        self.terminated = False
        self.truncated_reason: str | None = None
        self.builder: TokenTrajectory | None = None
        self._last_generate_s = 0.0
        self.task_id = str(task.get("task_id", task.get("task_index", "")))
        self._t0 = time.perf_counter()

    # ---- the loop ----------------------------------------------------------------------------
    async def run(self) -> list[Trajectory]:
        try:
            await self._reset()
            if (self.task_id, self.sample_index) in self.worker.skip:
                return []  # already recorded (resuming a run that named tasks by index)
            while await self._turn():
                pass
        except _Truncate as stop:
            self.truncated_reason = stop.reason
        except ToolgymError as exc:
            self._fail(exc.to_record())
        except Exception as exc:  # an unexpected crash is this episode's env failure
            self._fail(ErrorRecord.from_exception(exc, "env"))
        self.timings.total_s = time.perf_counter() - self._t0
        return self._trajectories()

    def _fail(self, record: ErrorRecord) -> None:
        self.error = record
        self.healthy = False

    async def _reset(self) -> None:
        if self.cfg.max_turns is not None:
            self.env.max_turns = self.cfg.max_turns
        seed = None if self.cfg.seed is None else self.cfg.seed + self.sample_index
        if _cheap_reset(self.env):
            obs, info = self.env.reset(seed=seed, options=dict(self.task_opts))
        else:  # setup_episode may start a sandbox: keep the loop free for the other episodes
            obs, info = await asyncio.to_thread(self.env.reset, seed=seed, options=dict(self.task_opts))
        self.task_id = str(info.get("task_id", self.task_id))
        self.messages, self.tools = obs, info.get("tools") or []
        fmt = ChatFormat(self.worker.engine.tokenizer, self.tools, chat_template=self.cfg.chat_template)
        self.builder = TokenTrajectory(fmt, obs, drift_policy=self.cfg.drift_policy, drift_check=self.cfg.drift_check)
        self.cost.prompt_tokens = self.builder.prompt_len

    async def _turn(self) -> bool:
        """One assistant turn and the env's reply; False when the episode is over."""
        b = self.builder
        assert b is not None
        budget = min(self.cfg.max_new_tokens, self.cfg.max_total_tokens - len(b.token_ids))
        if budget <= 0:
            raise _Truncate("max_total_tokens")
        completion = await self._generate(list(b.token_ids), budget)
        start = len(b.token_ids)
        text = b.add_completion(completion)
        end = len(b.token_ids)
        self.cost.completion_tokens += end - start
        obs, report, env_s = await self._step(text)
        turn = Turn(index=len(self.turn_rewards), start=start, end=end, env_start=end, env_end=end,
                    finish_reason=completion.finish_reason, reward=report.reward, env_s=env_s,
                    generate_s=self._last_generate_s, tool_results=[_tool_record(t) for t in report.tools])
        self.turn_rewards.append(report.reward)
        self.messages = obs
        if report.ended:
            self.terminated = report.terminated
            self.truncated_reason = report.truncated_reason if report.truncated else None
            self.segments[-1].turns.append(turn)
            return False
        reply = b.add_env_reply(obs)
        if reply.drift is not None:
            self.drift.append(reply.drift)
        turn.env_start, turn.env_end = reply.start, reply.end
        self.cost.env_tokens += reply.end - reply.start
        self.segments[-1].turns.append(turn)
        if reply.closed is not None:
            self.segments[-1].segment = reply.closed
            self.segments.append(_SegmentTurns())
            self.cost.prompt_tokens += b.prompt_len
        return True

    async def _generate(self, prompt_ids: list[int], budget: int) -> Completion:
        t = time.perf_counter()
        seed = None
        if self.cfg.sampling_seed is not None:
            seed = request_seed(self.cfg.sampling_seed, repr(sorted(self.task_opts.items())), self.sample_index,
                                self.attempt, len(self.turn_rewards))
        params = self.cfg.sampling(budget, seed)
        chat = ChatPrompt(self.messages, self.tools or None)
        try:
            completion = await asyncio.wait_for(self.worker.engine.generate(prompt_ids, params, chat),
                                                self._timeout(self.cfg.generate_timeout_s))
        except OverlongPromptError:
            raise _Truncate("context_length") from None
        except TimeoutError:
            if self._out_of_time():
                raise _Truncate("time_limit") from None
            raise ModelError(f"generation took longer than {self.cfg.generate_timeout_s}s") from None
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"engine failed: {type(exc).__name__}: {exc}") from exc
        self._last_generate_s = time.perf_counter() - t
        self.timings.generate_s += self._last_generate_s
        if not completion.token_ids:
            raise ModelError("engine returned an empty completion")
        self.exact = self.exact and completion.exact
        return completion

    async def _step(self, text: str) -> tuple[Any, TurnReport, float]:
        t = time.perf_counter()
        try:
            obs, reward, terminated, truncated, info = await asyncio.wait_for(
                self.env.astep(text), self._timeout(self.cfg.step_timeout_s))
        except TimeoutError:
            self.healthy = False  # the cancelled step left the env mid-turn
            if self._out_of_time():
                raise _Truncate("time_limit") from None
            raise ToolError(f"environment step took longer than {self.cfg.step_timeout_s}s "
                            "(a tool without its own timeout hung)") from None
        env_s = time.perf_counter() - t
        report = TurnReport.from_info(info, reward, terminated, truncated)
        self.timings.env_s += env_s
        self.cost.tool_s += env_s
        self.cost.tool_calls += report.tool_calls
        self.cost.tool_errors += report.tool_errors
        self.cost.malformed_calls = max(report.total_malformed_calls, self.cost.malformed_calls)
        self.cost.sandbox_s += report.sandbox_s
        if report.ended:
            self.final = report
            if report.error is not None:
                self.error = report.error
        return obs, report, env_s

    def _timeout(self, own: float | None) -> float | None:
        if self.cfg.episode_timeout_s is None:
            return own
        left = max(0.0, self.cfg.episode_timeout_s - (time.perf_counter() - self._t0))
        return left if own is None else min(own, left)

    def _out_of_time(self) -> bool:
        limit = self.cfg.episode_timeout_s
        return limit is not None and time.perf_counter() - self._t0 >= limit - 1e-3

    # ---- records -----------------------------------------------------------------------------
    def _trajectories(self) -> list[Trajectory]:
        if self.builder is not None and self.segments[-1].segment is None:
            self.segments[-1].segment = self.builder.segment
        env_version = str(getattr(self.env, "version", ""))
        spec = getattr(self.env, "spec", None)
        env_id = getattr(spec, "id", None) or self.worker.env_id
        versions = {"toolgym": _toolgym_version(), "env": env_version, "model": self.worker.model_version,
                    "weights": str(getattr(self.worker.engine, "weights_version", 0)), **_pack_versions(env_id)}
        reward = float(sum(self.turn_rewards)) if self.error is None or self.final is not None else 0.0
        rubric = dict(self.final.rubric) if self.final is not None else {}
        final_reward = self.final.final_reward if self.final is not None else None
        out = []
        for i, part in enumerate(self.segments):
            seg = part.segment or Segment([], [], [], 0)
            out.append(Trajectory(
                env_id=env_id, env_version=env_version, task_id=self.task_id,
                group_id=self.group_id or self.task_id, sample_index=self.sample_index, segment=i,
                messages=self.messages, token_ids=seg.token_ids, loss_mask=seg.loss_mask, logprobs=seg.logprobs,
                prompt_len=seg.prompt_len, turns=part.turns, turn_rewards=[t.reward for t in part.turns],
                reward=reward, rubric=rubric, terminated=self.terminated,
                truncated=self.truncated_reason is not None, truncated_reason=self.truncated_reason,
                error=self.error, attempts=self.attempt, exact=self.exact, drift=list(self.drift),
                timings=self.timings, cost=self.cost, versions=versions,
                metadata={"final_reward": final_reward, "segments": len(self.segments)}))
        return out


def _cheap_reset(env: Any) -> bool:
    """True when ``reset`` acquires nothing (no ``setup_episode`` override): run it inline."""
    from toolgym.envs.base import ToolEnv

    return isinstance(env, ToolEnv) and type(env).setup_episode is ToolEnv.setup_episode


def _tool_record(outcome: ToolOutcome) -> ToolResultRecord:
    return ToolResultRecord(name=outcome.name, ok=outcome.ok, error=outcome.error, elapsed_s=outcome.elapsed_s,
                            chars=outcome.chars)


def _toolgym_version() -> str:
    import toolgym

    return str(toolgym.__version__)


def _pack_versions(env_id: str) -> dict[str, str]:
    """The pack that provides ``env_id``: name, version and content hash (empty for unregistered envs)."""
    from toolgym.packs import installed_pack
    from toolgym.registry import registered

    spec = registered().get(env_id)
    return installed_pack(spec.pack) if spec is not None else {}
