"""GRPO for tool-use agents, on one process: rollouts, rewards, advantages, update, repeat.

What it implements: group-relative policy optimisation (Shao et al. 2024) for multi-turn tool
use. Each step samples ``tasks_per_step`` tasks, runs ``group_size`` episodes of each through the
rollout worker (tools run while other episodes generate), takes the environment's rewards, turns
them into advantages (per episode, or per turn when the env gives turn rewards), and makes one
optimizer step with a loss from :data:`toolgym.trainers.losses.LOSSES`. The engine that samples is
fed the new weights before the next step (same model object for ``hf``; a weight update for
``vllm``).

Where it departs from the papers: (1) sequences are whole multi-turn episodes whose tool/env
tokens are masked out of every term; (2) one optimizer step per batch, so the "old" policy is the
current one (its log-probabilities are detached, not recomputed), and the sampler's own
log-probabilities are used only for the importance sampling correction of sampler/trainer
mismatch (as in TRL); (3) episodes that failed with an
error get NaN reward: they are left out of the group baseline and get zero advantage; (4) DAPO's
dynamic sampling refills the batch with fresh groups, at most ``max_refills`` times.

Run it with ``toolgym train`` (Hydra; see conf/). The loop reads top to bottom in :func:`train`.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from toolgym.rollouts.records import Trajectory
from toolgym.rollouts.worker import RolloutRequest, RolloutWorker
from toolgym.trainers.advantages import compute_advantages, dynamic_sampling_filter, turn_level_advantages
from toolgym.trainers.batch import TokenBatch, pad_batch, token_logprobs
from toolgym.trainers.curriculum import CurriculumConfig, TaskSampler
from toolgym.trainers.losses import BatchTotals, LossConfig, compute_loss
from toolgym.trainers.sft import SFTConfig


@dataclass
class TrainerConfig:
    """The optimisation recipe.

    Args:
        steps: GRPO steps (optimizer updates of the policy).
        tasks_per_step: Distinct tasks per step; each gets ``group_size`` episodes.
        group_size: Episodes per task (G).
        lr, weight_decay, warmup_steps, grad_clip: AdamW with linear warm-up then constant.
        micro_batch_size: Sequences per forward/backward pass (gradient accumulation inside a step).
        advantage: Key of ``ADVANTAGES``.
        per_turn: Token advantages from per-turn rewards (returns-to-go) instead of episode rewards.
        gamma: Discount over turns when ``per_turn``.
        dynamic_sampling: Drop groups whose rewards are all equal and refill (DAPO).
        max_refills: Rounds of refilling per step.
        eval_every: Evaluate on held-out tasks every this many steps (0: only before/after).
        eval_episodes: Held-out episodes per evaluation (greedy decoding).
        checkpoint_every: Save a checkpoint every this many steps (and always at the end).
        keep_checkpoints: How many checkpoints to keep.
        loss: Loss type and its hyper-parameters.
        sft: Supervised warm start before GRPO.
        curriculum: How tasks are chosen each step (uniform, or by online pass rate).
    """

    steps: int = 20
    tasks_per_step: int = 8
    group_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    micro_batch_size: int = 32
    advantage: str = "grpo"
    per_turn: bool = False
    gamma: float = 1.0
    dynamic_sampling: bool = False
    max_refills: int = 2
    eval_every: int = 0
    eval_episodes: int = 64
    checkpoint_every: int = 5
    keep_checkpoints: int = 2
    loss: LossConfig = field(default_factory=LossConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)


# ---- rollouts --------------------------------------------------------------------------------
def sample_requests(num_tasks: int, sampler: TaskSampler, group_size: int, rng: random.Random) -> list[RolloutRequest]:
    """``num_tasks`` distinct tasks (by index, chosen by the curriculum), each a group of ``group_size`` episodes."""
    return [RolloutRequest({"task_index": i}, group_size=group_size, group_id=f"t{i}")
            for i in sampler.sample(num_tasks, rng)]


def grouped(trajectories: list[Trajectory]) -> list[list[Trajectory]]:
    """Trajectories grouped by ``group_id`` (split-at-drift segments stay in their episode's group)."""
    groups: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        groups.setdefault(t.group_id or t.task_id, []).append(t)
    return list(groups.values())


def episode_reward(t: Trajectory) -> float:
    """NaN for failed episodes: they get no advantage and stay out of the baseline."""
    return float("nan") if t.error is not None else float(t.reward)


def collect(worker: RolloutWorker, cfg: TrainerConfig, sampler: TaskSampler, rng: random.Random
            ) -> tuple[list[list[Trajectory]], dict[str, float]]:
    """Run rollouts for one step; with dynamic sampling keep only groups that can teach something.

    Every group that ran (kept or dropped) updates the curriculum's pass rates.
    """
    groups: list[list[Trajectory]] = []
    stats = {"groups_sampled": 0.0, "groups_dropped": 0.0}
    for _ in range(1 + (cfg.max_refills if cfg.dynamic_sampling else 0)):
        need = cfg.tasks_per_step - len(groups)
        if need <= 0:
            break
        batch = grouped(worker.run_sync(sample_requests(need, sampler, cfg.group_size, rng)))
        stats["groups_sampled"] += len(batch)
        for g in batch:
            if g[0].group_id.startswith("t"):
                sampler.update(int(g[0].group_id[1:]), [episode_reward(t) for t in g if t.segment == 0])
        if cfg.dynamic_sampling:
            rewards = torch.tensor([[episode_reward(t) for t in g] for g in batch if len(g) == cfg.group_size])
            keep = dynamic_sampling_filter(rewards).tolist() if len(rewards) else []
            kept = [g for g, k in zip([g for g in batch if len(g) == cfg.group_size], keep, strict=True) if k]
            stats["groups_dropped"] += len(batch) - len(kept)
            batch = kept
        groups.extend(batch)
    return groups[: cfg.tasks_per_step] if cfg.dynamic_sampling else groups, stats


# ---- advantages ------------------------------------------------------------------------------
def token_advantages(groups: list[list[Trajectory]], cfg: TrainerConfig) -> list[list[float]]:
    """Per-token advantages for every trajectory, in ``groups`` order."""
    if cfg.per_turn:
        return _per_turn_advantages(groups, cfg)
    out: list[list[float]] = []
    for g in groups:
        rewards = torch.tensor([[episode_reward(t) for t in g]])  # [1, G]
        adv = compute_advantages(rewards, cfg.advantage)[0]  # [G]
        out.extend([float(a)] * len(t.token_ids) for a, t in zip(adv.tolist(), g, strict=True))
    return out


def _per_turn_advantages(groups: list[list[Trajectory]], cfg: TrainerConfig) -> list[list[float]]:
    out: list[list[float]] = []
    for g in groups:
        turns = max(len(t.turn_rewards) for t in g) or 1
        rewards = torch.full((1, len(g), turns), float("nan"))  # [1, G, T]
        width = max(len(t.token_ids) for t in g)
        token_turns = torch.full((len(g), width), -1, dtype=torch.long)  # [G, L]
        for i, t in enumerate(g):
            if t.error is None:
                rewards[0, i, : len(t.turn_rewards)] = torch.tensor(t.turn_rewards, dtype=torch.float)
            for k, turn in enumerate(t.turns):
                token_turns[i, turn.start:turn.end] = k
        adv = turn_level_advantages(rewards, token_turns, cfg.gamma, cfg.advantage)  # [G, L]
        out.extend(adv[i, : len(t.token_ids)].tolist() for i, t in enumerate(g))
    return out


# ---- the update ------------------------------------------------------------------------------
def policy_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: TokenBatch | None,
                  cfg: TrainerConfig,
                  temperature: float, ref_model: torch.nn.Module | None = None) -> dict[str, float]:
    """One optimizer step over ``batch`` with gradient accumulation over micro-batches."""
    if batch is None:  # dynamic sampling dropped every group: nothing to learn from this step
        return {"loss": 0.0, "skipped": 1.0}
    device = next(model.parameters()).device
    micro = [batch.slice(i, i + cfg.micro_batch_size).to(device) for i in range(0, len(batch), cfg.micro_batch_size)]
    totals = BatchTotals.of([m.mask for m in micro])
    if totals.num_tokens == 0:
        return {"loss": 0.0, "skipped": 1.0}
    sums: dict[str, float] = {}
    model.train()
    for m in micro:
        with torch.no_grad():
            ref = token_logprobs(ref_model, m.ids, m.attention, temperature) if ref_model is not None else None
        lp = token_logprobs(model, m.ids, m.attention, temperature)  # [b, L]
        # One optimizer step per batch: the old policy is the current one, so old_logprobs=None
        # (the loss uses lp.detach()) saves a forward pass and gives the same loss and gradient.
        out = compute_loss(lp, None, m.advantages, m.mask, cfg.loss, totals, ref_logprobs=ref,
                           sampler_logprobs=m.sampler_logprobs)
        out.loss.backward()
        share = float(m.mask.sum()) / totals.num_tokens
        sums["loss"] = sums.get("loss", 0.0) + float(out.loss.detach())
        entropy_proxy = -float((lp.detach() * m.mask).sum()) / max(float(m.mask.sum()), 1.0)
        sums["neg_logprob"] = sums.get("neg_logprob", 0.0) + entropy_proxy * share
        for k, v in out.metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v) * share
    sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return sums


def build_batch(groups: list[list[Trajectory]], cfg: TrainerConfig, pad_id: int) -> TokenBatch | None:
    """Pad every trajectory of the step into one batch with per-token advantages (None if empty)."""
    flat = [t for g in groups for t in g]
    if not flat:
        return None
    advantages = token_advantages(groups, cfg)
    masks = [t.loss_mask if t.error is None else [0] * len(t.token_ids) for t in flat]
    return pad_batch([t.token_ids for t in flat], masks, [t.logprobs for t in flat], advantages, pad_id=pad_id)


# ---- evaluation ------------------------------------------------------------------------------
def evaluate(worker: RolloutWorker, num_tasks: int, episodes: int) -> dict[str, float]:
    """Greedy episodes on the first ``episodes`` held-out tasks: mean reward and pass rate."""
    requests = [RolloutRequest({"task_index": i}, group_size=1, group_id=f"e{i}") for i in range(min(episodes, num_tasks))]
    trajectories = worker.run_sync(requests)
    rewards = [0.0 if t.error is not None else t.reward for t in trajectories if t.segment == 0]
    return {"reward": sum(rewards) / max(len(rewards), 1),
            "pass_rate": sum(r >= 1.0 - 1e-9 for r in rewards) / max(len(rewards), 1),
            "errors": float(sum(t.error is not None for t in trajectories)),
            "turns": sum(len(t.turns) for t in trajectories) / max(len(trajectories), 1)}


def step_metrics(groups: list[list[Trajectory]], update: dict[str, float], timing: dict[str, float]) -> dict[str, float]:
    """The per-step line: reward mean/std, pass rate, tokens/s and the time split."""
    flat = [t for g in groups for t in g]
    rewards = [episode_reward(t) for t in flat]
    ok = [r for r in rewards if not math.isnan(r)]
    mean = sum(ok) / max(len(ok), 1)
    std = (sum((r - mean) ** 2 for r in ok) / max(len(ok), 1)) ** 0.5
    sampled = sum(sum(t.loss_mask) for t in flat)
    # groups whose rewards differ: the only ones with a non-zero advantage (what a curriculum raises)
    informative = sum(len({episode_reward(t) for t in g if t.error is None}) > 1 for g in groups)
    return {"reward_mean": mean, "reward_std": std, "pass_rate": sum(r >= 1.0 - 1e-9 for r in ok) / max(len(ok), 1),
            "informative_groups": informative / max(len(groups), 1),
            "episodes": float(len(flat)), "errors": float(len(rewards) - len(ok)),
            "tool_calls": float(sum(t.cost.tool_calls for t in flat)) / max(len(flat), 1),
            # tool time per episode; it overlaps generation (the worker runs tools while others generate)
            "tools_s_per_episode": sum(t.timings.env_s for t in flat) / max(len(flat), 1),
            "tokens_per_s": sampled / max(timing["generate_s"], 1e-9), **update, **timing}


def learning_rate_lambda(cfg: TrainerConfig) -> Callable[[int], float]:
    return lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0


def write_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t
