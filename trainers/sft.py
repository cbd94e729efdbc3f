"""Supervised warm start from demonstrations, with the same token layout and masks as RL.

Demonstrations are chats (an env's oracle ``demonstration(task)`` or recorded trajectories). They
are tokenised with :func:`toolgym.rollouts.tokens.conversation_tokens`, the same template deltas
the rollout worker uses, so only assistant tokens (content + end-of-turn) carry loss.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from toolgym.rollouts.records import Trajectory
from toolgym.rollouts.tokens import ChatFormat, conversation_tokens
from toolgym.trainers.batch import pad_batch, token_logprobs


@dataclass
class SFTConfig:
    """Warm-start settings; ``steps=0`` skips it."""

    steps: int = 0
    batch_size: int = 32
    lr: float = 3e-3
    demonstrations: int = 2000  # how many train tasks to take demonstrations from
    jsonl: str | None = None  # or a JSONL of trajectories (their token arrays are used as they are)
    hold: float = 0.0  # fraction of steps held at the peak learning rate before the linear decay to 10%


def demonstration_samples(env: Any, count: int, fmt: ChatFormat) -> list[tuple[list[int], list[int]]]:
    """Token ids and masks of the env's oracle demonstrations for its first ``count`` tasks."""
    samples = []
    for i in range(min(count, len(env.tasks))):
        demo = env.demonstration(env.tasks[i])
        if demo is None:
            raise ValueError(f"{type(env).__name__} provides no demonstrations; give sft.jsonl instead")
        seg = conversation_tokens(fmt, demo)
        samples.append((seg.token_ids, seg.loss_mask))
    return samples


def trajectory_samples(trajectories: Sequence[Trajectory], min_reward: float = 0.0) -> list[tuple[list[int], list[int]]]:
    """Token ids and masks of recorded trajectories (failed ones and those below ``min_reward`` left out)."""
    return [(t.token_ids, t.loss_mask) for t in trajectories if t.error is None and t.reward >= min_reward]


def sft_lr_factor(step: int, total: int, warmup: int = 20, hold: float = 0.0) -> float:
    """Warm up, hold the peak for a fraction ``hold`` of the run, then decay linearly to 10%.

    Example:
        >>> [round(sft_lr_factor(s, 100), 2) for s in (0, 50, 99)]
        [0.05, 0.55, 0.11]
        >>> round(sft_lr_factor(50, 100, hold=0.7), 2)
        1.0
    """
    if step < warmup:
        return (step + 1) / warmup
    peak_until = int(hold * total)
    if step < peak_until:
        return 1.0
    return 1.0 - 0.9 * (step - peak_until) / max(total - peak_until, 1)


def sft(model: torch.nn.Module, samples: list[tuple[list[int], list[int]]], cfg: SFTConfig, *, pad_id: int,
        seed: int = 0, log: Callable[[int, float], None] | None = None) -> list[float]:
    """Masked next-token cross-entropy on the samples; returns the loss of each step."""
    if cfg.steps <= 0 or not samples:
        return []
    rng = random.Random(seed)
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: sft_lr_factor(s, cfg.steps, hold=cfg.hold))
    model.train()
    losses = []
    for step in range(cfg.steps):
        chosen = [samples[rng.randrange(len(samples))] for _ in range(cfg.batch_size)]
        batch = pad_batch([c[0] for c in chosen], [c[1] for c in chosen], pad_id=pad_id).to(device)
        # Only the assistant tokens are scored: the output head skips prompt and tool-output positions.
        lp = token_logprobs(model, batch.ids, batch.attention, score_mask=batch.mask)  # [B, L], 0 off the mask
        loss = -(lp * batch.mask).sum() / batch.mask.sum().clamp(min=1)
        if loss.requires_grad:  # a batch without one trainable token has no graph (and no gradient)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if log is not None:
            log(step, losses[-1])
    return losses
