"""Trainers: GRPO and its loss variants, the SFT warm start, checkpoints, and the ``toolgym train`` run.

The run reads top to bottom in :mod:`toolgym.trainers.loop` (``train``: evaluate, warm start, then
generate -> update -> sync each step); its pure pieces are here::

    from toolgym.trainers import TrainerConfig, LossConfig, build_batch, policy_update
    batch = build_batch(groups, TrainerConfig(loss=LossConfig(loss_type="dapo")), pad_id=0)  # [B, L]
    metrics = policy_update(model, optimizer, batch, cfg, temperature=1.0)

Losses are entries of :data:`LOSSES` and advantage estimators of :data:`ADVANTAGES` (name -> pure
function). ``toolgym.trainers.trl_adapter`` (TRL's ``GRPOTrainer`` on toolgym envs) imports TRL and
is not imported here.
"""

from __future__ import annotations

from toolgym.trainers.advantages import (
    ADVANTAGES,
    compute_advantages,
    kl_penalized_rewards,
    turn_level_advantages,
)
from toolgym.trainers.batch import TokenBatch, pad_batch, token_logprobs
from toolgym.trainers.checkpoint import find_latest, load_checkpoint, save_checkpoint
from toolgym.trainers.config import EnvConfig, TrainConfig, register_configs
from toolgym.trainers.curriculum import SAMPLERS, CurriculumConfig, TaskSampler, make_sampler
from toolgym.trainers.grpo import TrainerConfig, build_batch, collect, evaluate, policy_update, step_metrics
from toolgym.trainers.loop import RunState, one_step, sync_weights, train
from toolgym.trainers.losses import LOSSES, BatchTotals, LossConfig, LossOutput, compute_loss, kl_in_reward
from toolgym.trainers.model import LoraConfig, ModelConfig, load_policy
from toolgym.trainers.runlog import RunLog, plot_curve
from toolgym.trainers.sft import SFTConfig, demonstration_samples, sft, trajectory_samples

__all__ = [
    "ADVANTAGES", "LOSSES", "SAMPLERS", "BatchTotals", "CurriculumConfig", "EnvConfig", "LoraConfig", "LossConfig",
    "LossOutput", "ModelConfig", "RunLog", "RunState", "SFTConfig", "TaskSampler", "TokenBatch", "TrainConfig",
    "TrainerConfig", "build_batch", "collect", "compute_advantages", "compute_loss", "demonstration_samples",
    "evaluate", "find_latest", "kl_in_reward", "kl_penalized_rewards", "load_checkpoint", "load_policy",
    "make_sampler", "one_step", "pad_batch", "plot_curve", "policy_update", "register_configs", "save_checkpoint",
    "sft", "step_metrics", "sync_weights", "token_logprobs", "train", "trajectory_samples", "turn_level_advantages",
]
