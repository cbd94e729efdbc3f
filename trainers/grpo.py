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

Run it with ``toolgym train`` (Hydra; see conf/). The loop that calls these pieces reads top to
bottom in :func:`toolgym.trainers.loop.train`; this module holds the pieces themselves.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from toolgym.errors import ConfigError
from toolgym.rollouts.metrics import pass_rate
from toolgym.rollouts.records import Trajectory
from toolgym.rollouts.worker import RolloutRequest, RolloutWorker
from toolgym.trainers.advantages import (
    compute_advantages,
    dynamic_sampling_filter,
    kl_penalized_rewards,
    turn_level_advantages,
)
from toolgym.trainers.batch import DEFAULT_CHUNK_TOKENS, TokenBatch, pad_batch, token_logprobs
from toolgym.trainers.curriculum import CurriculumConfig, TaskSampler
from toolgym.trainers.losses import BatchTotals, LossConfig, compute_loss, kl_in_reward
from toolgym.trainers.sft import SFTConfig

log = logging.getLogger("toolgym.train")


@dataclass
class TrainerConfig:
    """The optimisation recipe.

    Args:
        steps: GRPO steps (optimizer updates of the policy).
        tasks_per_step: Distinct tasks per step; each gets ``group_size`` episodes.
        group_size: Episodes per task (G).
        lr, weight_decay, warmup_steps, grad_clip: AdamW with linear warm-up then constant.
        micro_batch_size: Sequences per forward/backward pass (gradient accumulation inside a step).
        logprob_chunk_tokens: Positions the output head scores at a time (bounds the logits' memory,
            see :func:`toolgym.trainers.batch.token_logprobs`); 0 computes full logits.
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
    logprob_chunk_tokens: int = DEFAULT_CHUNK_TOKENS
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
        requests = sample_requests(need, sampler, cfg.group_size, rng)
        task_index = {r.group_id: int(r.task["task_index"]) for r in requests}
        batch = grouped(worker.run_sync(requests))
        stats["groups_sampled"] += len(batch)
        for g in batch:
            sampler.update(task_index[g[0].group_id], [episode_reward(t) for t in g if t.segment == 0])
        if cfg.dynamic_sampling:
            rewards = torch.tensor([[episode_reward(t) for t in g] for g in batch if len(g) == cfg.group_size])
            keep = dynamic_sampling_filter(rewards).tolist() if len(rewards) else []
            kept = [g for g, k in zip([g for g in batch if len(g) == cfg.group_size], keep, strict=True) if k]
            stats["groups_dropped"] += len(batch) - len(kept)
            batch = kept
        groups.extend(batch)
    return groups[: cfg.tasks_per_step] if cfg.dynamic_sampling else groups, stats


# ---- advantages ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RewardKL:
    """What RLOO's KL-in-the-reward penalty needs, one row per trajectory in flat ``groups`` order."""

    old_logprobs: torch.Tensor  # [B, L] policy log-probs of the sampled tokens (pi_old), 0 off the mask
    ref_logprobs: torch.Tensor  # [B, L] reference-policy log-probs, 0 off the mask
    mask: torch.Tensor  # [B, L] trainable-token mask
    beta: float


def token_advantages(groups: list[list[Trajectory]], cfg: TrainerConfig,
                     kl: RewardKL | None = None) -> list[list[float]]:
    """Per-token advantages for every trajectory, in ``groups`` order.

    The estimator sees every group of the step at once (``[N, G]``; groups of unequal size are
    padded with NaN, which every estimator leaves out), so the batch statistics of
    ``grpo_batch_std`` and ``rloo_normalized`` span the whole step, as in TRL.

    Args:
        groups: The step's trajectories, one list per task.
        cfg: Uses ``advantage``, ``per_turn`` and ``gamma``.
        kl: When given, each reward first loses ``beta * sum_t (log pi_old - log pi_ref)`` over its
            own tokens (per turn when ``per_turn``), as TRL's RLOO does.
    """
    flat = [t for g in groups for t in g]
    if not flat:
        return []
    if cfg.per_turn:
        return _per_turn_advantages(groups, cfg, kl)
    rewards = torch.tensor([episode_reward(t) for t in flat])  # [B]
    if kl is not None:
        rewards = kl_penalized_rewards(rewards, kl.old_logprobs, kl.ref_logprobs, kl.mask, kl.beta)  # [B]
    adv = _ungroup(compute_advantages(_regroup(rewards, groups, float("nan")), cfg.advantage), groups)  # [B]
    return [[float(a)] * len(t.token_ids) for a, t in zip(adv.tolist(), flat, strict=True)]


def _per_turn_advantages(groups: list[list[Trajectory]], cfg: TrainerConfig,
                         kl: RewardKL | None = None) -> list[list[float]]:
    flat = [t for g in groups for t in g]
    # T covers every turn any trajectory has, so each token's turn index has a column.
    turns = max([1] + [len(t.turn_rewards) for t in flat] + [len(t.turns) for t in flat])
    width = max(len(t.token_ids) for t in flat)
    rewards = torch.full((len(flat), turns), float("nan"))  # [B, T]
    token_turns = torch.full((len(flat), width), -1, dtype=torch.long)  # [B, L]
    for i, t in enumerate(flat):
        if t.error is None:
            rewards[i, : len(t.turn_rewards)] = torch.tensor(t.turn_rewards, dtype=torch.float)
        for k, turn in enumerate(t.turns):
            token_turns[i, turn.start:turn.end] = k
    if kl is not None:
        for k in range(turns):  # each turn pays for its own tokens' KL; returns-to-go sum them
            in_turn = kl.mask * (token_turns == k).to(kl.mask.dtype)  # [B, L]
            rewards[:, k] = kl_penalized_rewards(rewards[:, k], kl.old_logprobs, kl.ref_logprobs, in_turn, kl.beta)
    by_group = _regroup(rewards, groups, float("nan"))  # [N, G, T]
    n, g = by_group.shape[:2]
    grouped_turns = _regroup(token_turns, groups, -1).reshape(n * g, width)  # [N*G, L]
    adv = turn_level_advantages(by_group, grouped_turns, cfg.gamma, cfg.advantage)  # [N*G, L]
    adv = _ungroup(adv.reshape(n, g, width), groups)  # [B, L]
    return [adv[i, : len(t.token_ids)].tolist() for i, t in enumerate(flat)]


def _regroup(values: torch.Tensor, groups: list[list[Trajectory]], fill: float) -> torch.Tensor:
    """``[B, ...]`` in flat ``groups`` order -> ``[N, G_max, ...]``, short groups padded with ``fill``."""
    rows, cols = _group_positions(groups)
    out = torch.full((len(groups), max(len(g) for g in groups), *values.shape[1:]), fill, dtype=values.dtype)
    out[rows, cols] = values
    return out


def _ungroup(values: torch.Tensor, groups: list[list[Trajectory]]) -> torch.Tensor:
    """``[N, G_max, ...]`` -> ``[B, ...]`` in flat ``groups`` order (the inverse of :func:`_regroup`)."""
    rows, cols = _group_positions(groups)
    return values[rows, cols]


def _group_positions(groups: list[list[Trajectory]]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.tensor([i for i, g in enumerate(groups) for _ in g], dtype=torch.long)  # [B]
    cols = torch.tensor([j for g in groups for j in range(len(g))], dtype=torch.long)  # [B]
    return rows, cols


# ---- the update ------------------------------------------------------------------------------
def policy_update(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: TokenBatch | None,
                  cfg: TrainerConfig,
                  temperature: float, ref_model: torch.nn.Module | None = None) -> dict[str, float]:
    """One optimizer step over ``batch`` with gradient accumulation over micro-batches.

    A batch that cannot move the weights is skipped without a forward or backward pass and without
    an optimizer step (``skipped: 1.0``): one with no trainable token or, when ``beta == 0``, one
    whose advantages are zero on every trainable token (``skipped_zero_advantage: 1.0``; every
    surrogate is then exactly zero). With ``beta > 0`` and the KL in the loss, the KL term still has a
    gradient, so such a batch is trained on (``rloo`` puts its KL in the rewards, see :func:`build_batch`). Skipping is not the same as stepping on a zero gradient: AdamW's moments,
    step count and weight decay stay as they are, so stale momentum does not move the weights. The
    learning-rate schedule is the caller's and counts GRPO steps, skipped or not.
    """
    # batch None: dynamic sampling dropped every group; no trainable token: nothing to learn either
    if batch is None or float(batch.mask.sum()) == 0:
        return _skipped()
    kl_in_loss = cfg.loss.beta > 0.0 and not kl_in_reward(cfg.loss)  # rloo pays its KL in the reward instead
    if not kl_in_loss and not has_signal(batch):
        return _skipped(zero_advantage=True, neg_logprob=sampler_neg_logprob(batch))
    device = next(model.parameters()).device
    micro = [batch.slice(i, i + cfg.micro_batch_size).to(device) for i in range(0, len(batch), cfg.micro_batch_size)]
    totals = BatchTotals.of([m.mask for m in micro])
    sums: dict[str, float] = {"skipped_zero_advantage": 0.0}
    model.train()
    for m in micro:
        if float(m.mask.sum()) == 0:  # no trainable token: a zero share of the loss and of every metric
            continue
        with torch.no_grad():
            ref = (token_logprobs(ref_model, m.ids, m.attention, temperature, score_mask=m.mask,
                                  chunk_tokens=cfg.logprob_chunk_tokens) if ref_model is not None and kl_in_loss
                   else None)
        lp = token_logprobs(model, m.ids, m.attention, temperature, score_mask=m.mask,
                            chunk_tokens=cfg.logprob_chunk_tokens)  # [b, L], 0 off the mask
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


def has_signal(batch: TokenBatch) -> bool:
    """Whether any trainable token has a non-zero (or NaN) advantage: without one, no surrogate has a gradient.

    Example:
        >>> b = pad_batch([[1, 2, 3]], [[0, 1, 1]], advantages=[[5.0, 0.0, 0.0]])
        >>> has_signal(b)  # the 5.0 sits on a prompt token
        False
    """
    return bool(batch.advantages[batch.mask.bool()].ne(0).any())


def sampler_neg_logprob(batch: TokenBatch) -> float:
    """Mean negative sampler log-probability of the trainable tokens (NaN ones left out).

    Stands in for the trainer's ``neg_logprob`` on a skipped step (no forward pass ran): the
    sampler scores the same tokens at the same temperature, up to sampler/trainer mismatch.
    """
    lp = batch.sampler_logprobs[batch.mask.bool()]  # [N]
    lp = lp[~torch.isnan(lp)]
    return -float(lp.mean()) if lp.numel() else 0.0


def _skipped(zero_advantage: bool = False, neg_logprob: float | None = None) -> dict[str, float]:
    out = {"loss": 0.0, "skipped": 1.0, "grad_norm": 0.0, "skipped_zero_advantage": float(zero_advantage)}
    if neg_logprob is not None:
        out["neg_logprob"] = neg_logprob
    return out


def build_batch(groups: list[list[Trajectory]], cfg: TrainerConfig, pad_id: int, *,
                model: torch.nn.Module | None = None, ref_model: torch.nn.Module | None = None,
                temperature: float = 1.0) -> TokenBatch | None:
    """Pad every trajectory of the step into one batch with per-token advantages (None if empty).

    With the ``rloo`` loss and ``beta > 0`` the KL to the reference policy is a reward penalty, as
    in TRL's ``RLOOTrainer``: ``model`` (the policy that sampled the batch, pi_old) and
    ``ref_model`` score the batch first, without gradients, and each reward loses
    ``beta * sum_t (log pi_old - log pi_ref)`` over its trainable tokens before the advantages
    are computed (the loss then has no KL term). Other losses keep the KL in the loss and need
    neither model here.

    Args:
        groups: The step's trajectories, one list per task.
        cfg: The recipe.
        pad_id: Token id of the right padding.
        model: The policy; needed only when the KL goes in the reward.
        ref_model: The frozen reference policy; likewise.
        temperature: Sampling temperature, as passed to :func:`policy_update`.

    Raises:
        ConfigError: The KL goes in the reward but ``model`` or ``ref_model`` is missing.
    """
    flat = [t for g in groups for t in g]
    if not flat:
        return None
    masks = [t.loss_mask if t.error is None else [0] * len(t.token_ids) for t in flat]
    batch = pad_batch([t.token_ids for t in flat], masks, [t.logprobs for t in flat], pad_id=pad_id)
    kl = reward_kl(batch, cfg, model, ref_model, temperature) if kl_in_reward(cfg.loss) else None
    for i, adv in enumerate(token_advantages(groups, cfg, kl)):
        batch.advantages[i, : len(adv)] = torch.tensor(adv, dtype=batch.advantages.dtype)
    return batch


@torch.no_grad()
def reward_kl(batch: TokenBatch, cfg: TrainerConfig, model: torch.nn.Module | None,
              ref_model: torch.nn.Module | None, temperature: float) -> RewardKL:
    """Policy and reference log-probs of ``batch``'s trainable tokens, scored a micro-batch at a time."""
    if model is None or ref_model is None:
        raise ConfigError(f"loss {cfg.loss.loss_type!r} with beta > 0 puts the KL in the reward (TRL RLOO): "
                          "build_batch needs model= and ref_model=; loss_type='rloo_k3' keeps it in the loss")
    device = next(model.parameters()).device
    old, ref = [], []
    for i in range(0, len(batch), cfg.micro_batch_size):
        m = batch.slice(i, i + cfg.micro_batch_size).to(device)
        for net, out in ((model, old), (ref_model, ref)):
            out.append(token_logprobs(net, m.ids, m.attention, temperature, score_mask=m.mask,
                                      chunk_tokens=cfg.logprob_chunk_tokens).float().cpu())  # [b, L]
    return RewardKL(torch.cat(old), torch.cat(ref), batch.mask, cfg.loss.beta)


# ---- evaluation ------------------------------------------------------------------------------
def evaluate(worker: RolloutWorker, num_tasks: int, episodes: int, threshold: float = 1.0) -> dict[str, float]:
    """Greedy episodes on the first ``episodes`` held-out tasks: mean reward and pass rate.

    ``threshold`` is the reward that counts as solved (:func:`toolgym.rollouts.metrics.success_threshold`
    of the env).
    """
    requests = [RolloutRequest({"task_index": i}, group_size=1, group_id=f"e{i}") for i in range(min(episodes, num_tasks))]
    trajectories = worker.run_sync(requests)
    rewards = [0.0 if t.error is not None else t.reward for t in trajectories if t.segment == 0]
    return {"reward": sum(rewards) / max(len(rewards), 1),
            "pass_rate": pass_rate(rewards, threshold),
            "errors": float(sum(t.error is not None for t in trajectories)),
            "turns": sum(len(t.turns) for t in trajectories) / max(len(trajectories), 1)}


def step_metrics(groups: list[list[Trajectory]], update: dict[str, float], timing: dict[str, float],
                 threshold: float = 1.0) -> dict[str, float]:
    """The per-step line: reward mean/std, pass rate (solved at ``threshold``), tokens/s and the time split."""
    flat = [t for g in groups for t in g]
    rewards = [episode_reward(t) for t in flat]
    ok = [r for r in rewards if not math.isnan(r)]
    mean = sum(ok) / max(len(ok), 1)
    std = (sum((r - mean) ** 2 for r in ok) / max(len(ok), 1)) ** 0.5
    sampled = sum(sum(t.loss_mask) for t in flat)
    # groups whose rewards differ: the only ones with a non-zero advantage (what a curriculum raises)
    informative = sum(len({episode_reward(t) for t in g if t.error is None}) > 1 for g in groups)
    return {"reward_mean": mean, "reward_std": std, "pass_rate": pass_rate(ok, threshold),
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


# ---- runtime ---------------------------------------------------------------------------------
def available_cpu_cores() -> int:
    """Physical cores this process may run on: its CPU affinity, SMT siblings counted once, capped by a cgroup quota.

    Example:
        >>> 1 <= available_cpu_cores() <= os.cpu_count()
        True
    """
    cores = set()
    for cpu in os.sched_getaffinity(0):
        try:  # hyper-threads of one core list the same siblings
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    quota = _cgroup_cpu_quota()
    return max(1, min(len(cores), quota) if quota is not None else len(cores))


def _cgroup_cpu_quota() -> int | None:
    # A container limited to quota/period CPUs: cgroup v2 "200000 100000" ("max": none), or v1's two files.
    for files in (("/sys/fs/cgroup/cpu.max",), ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            parts = " ".join(Path(f).read_text() for f in files).split()
            quota, period = parts[0], parts[1]
            if quota in ("max", "-1"):
                return None
            return max(1, math.ceil(int(quota) / int(period)))
        except (OSError, ValueError, IndexError):
            continue
    return None


def configure_cpu_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (None: :func:`available_cpu_cores`), never above that; returns it.

    Torch's own default counts logical CPUs of the whole machine on some builds, and more threads
    than cores (or hyper-threads sharing one core's FPU) make the GEMMs of a training step slower.
    Call it once at start-up, before the model is built. Inter-op threads are left alone: torch
    lets them be set only before any parallel work has run.
    """
    cap = available_cpu_cores()
    threads = cap if n is None else max(1, min(int(n), cap))
    if n is not None and n > cap:
        log.warning("cpu_threads=%d is more than the %d physical cores available; using %d", n, cap, cap)
    torch.set_num_threads(threads)
    return threads
