"""Rollouts: engines, token-exact trajectories, the concurrent rollout worker and ``toolgym eval``.

The pieces a trainer uses::

    from toolgym.rollouts import RolloutWorker, RolloutConfig, RolloutRequest, EngineConfig, make_engine
    engine = make_engine(EngineConfig(kind="hf", model="tiny"))
    worker = RolloutWorker(engine, lambda: toolgym.make("toolgym/Arithmetic-v0").unwrapped)
    trajectories = worker.run_sync([RolloutRequest({"task_index": i}, group_size=4) for i in range(8)])

Each :class:`Trajectory` carries ``token_ids``, ``loss_mask`` (1 = sampled) and the sampler's
``logprobs``, aligned, plus rewards, errors and costs.
"""

from __future__ import annotations

from toolgym.rollouts.engines import (
    ChatPrompt,
    Completion,
    Engine,
    EngineConfig,
    SamplingParams,
    make_engine,
    resolve_model,
)
from toolgym.rollouts.metrics import pass_at_k, pass_at_ks, pass_rate, solved, success_threshold
from toolgym.rollouts.records import (
    SCHEMA_VERSION,
    Cost,
    DriftEvent,
    Timings,
    ToolResultRecord,
    Trajectory,
    TrajectoryWriter,
    Turn,
    done_keys,
    iter_trajectories,
    read_trajectories,
    to_parquet,
)
from toolgym.rollouts.tokens import ChatFormat, Segment, TokenTrajectory, conversation_tokens
from toolgym.rollouts.worker import RolloutConfig, RolloutRequest, RolloutWorker

__all__ = [
    "SCHEMA_VERSION", "ChatFormat", "ChatPrompt", "Completion", "Cost", "DriftEvent", "Engine", "EngineConfig",
    "RolloutConfig", "RolloutRequest", "RolloutWorker", "SamplingParams", "Segment", "Timings", "TokenTrajectory",
    "ToolResultRecord", "Trajectory", "TrajectoryWriter", "Turn", "done_keys", "iter_trajectories",
    "conversation_tokens", "make_engine", "pass_at_k", "pass_at_ks", "pass_rate", "read_trajectories",
    "resolve_model", "solved", "success_threshold", "to_parquet",
]
