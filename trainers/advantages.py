"""Advantage estimators over groups of rollouts, plus DAPO's batch-shaping helpers.

Rewards come as ``[num_groups, G]``: row ``i`` holds the ``G`` rollouts of one task. NaN marks
an unscorable rollout (its verifier failed): it is left out of every baseline and statistic and
gets advantage 0, so it neither moves the policy nor biases its siblings (TRL 1.16 semantics).
Flatten ``[num_groups, G] -> [num_groups * G]`` row-major to line advantages up with a batch
built group by group.

Estimators live in :data:`ADVANTAGES`; each maps ``rewards [N, G] -> advantages [N, G]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from toolgym.errors import ConfigError

STD_EPS = 1e-4  # added to the std before dividing, as in TRL (keeps zero-variance groups finite)


def nanstd(x: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
    """Unbiased standard deviation ignoring NaNs; NaN where fewer than two values are present.

    Example:
        >>> nanstd(torch.tensor([1.0, 3.0, float("nan")]))
        tensor(1.4142)
    """
    dims = tuple(range(x.dim())) if dim is None else dim
    mean = torch.nanmean(x, dim=dims, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dims, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dims, keepdim=True)
    # Bessel's correction; a single value has no spread estimate at all.
    var = var * torch.where(count > 1, count / (count - 1), torch.full_like(var, float("nan")))
    std = torch.sqrt(var)
    return std if keepdim else std.squeeze(dims) if dim is not None else std.reshape(())


def group_normalized(rewards: Tensor) -> Tensor:
    """GRPO: ``(r - group mean) / (group std + 1e-4)`` (TRL ``scale_rewards="group"``).

    Example:
        >>> group_normalized(torch.tensor([[1.0, 0.0], [2.0, 2.0]])).round(decimals=3)
        tensor([[ 0.7070, -0.7070],
                [ 0.0000,  0.0000]])
    """
    centred = rewards - torch.nanmean(rewards, dim=1, keepdim=True)  # [N, G]
    return torch.nan_to_num(centred / (nanstd(rewards, dim=1, keepdim=True) + STD_EPS), nan=0.0)


def group_centered(rewards: Tensor) -> Tensor:
    """Dr. GRPO: ``r - group mean``, no std scaling (avoids the question-difficulty bias).

    Example:
        >>> group_centered(torch.tensor([[1.0, 0.0, 0.5]]))
        tensor([[ 0.5000, -0.5000,  0.0000]])
    """
    return torch.nan_to_num(rewards - torch.nanmean(rewards, dim=1, keepdim=True), nan=0.0)


def batch_std_normalized(rewards: Tensor) -> Tensor:
    """Group-mean baseline scaled by the whole batch's std (TRL ``scale_rewards="batch"``).

    Example:
        >>> batch_std_normalized(torch.tensor([[1.0, 0.0], [2.0, 2.0]])).round(decimals=3)
        tensor([[ 0.5220, -0.5220],
                [ 0.0000,  0.0000]])
    """
    centred = rewards - torch.nanmean(rewards, dim=1, keepdim=True)  # [N, G]
    return torch.nan_to_num(centred / (nanstd(rewards) + STD_EPS), nan=0.0)


def leave_one_out(rewards: Tensor) -> Tensor:
    """RLOO: ``r_i - mean of the other scorable rollouts of the group`` (unbiased baseline).

    A rollout without a scorable sibling has no baseline (leave-one-out over one value is
    undefined) and gets 0; :func:`leave_one_out_defined` says which rollouts have one.

    Example:
        >>> leave_one_out(torch.tensor([[1.0, 0.0, 0.5]]))
        tensor([[ 0.7500, -0.7500,  0.0000]])
    """
    count = (~torch.isnan(rewards)).sum(dim=1, keepdim=True)  # [N, 1]
    total = torch.nansum(rewards, dim=1, keepdim=True)  # [N, 1]
    # A lone scorable rollout has no sibling: 0/0 = NaN, zeroed below.
    baseline = (total - rewards) / (count - 1)  # [N, G]
    return torch.nan_to_num(rewards - baseline, nan=0.0)


def leave_one_out_defined(rewards: Tensor) -> Tensor:
    """Which rollouts have a leave-one-out baseline: scorable, with at least one scorable sibling.

    Example:
        >>> leave_one_out_defined(torch.tensor([[1.0, 0.0, float("nan")], [1.0, float("nan"), float("nan")]]))
        tensor([[ True,  True, False],
                [False, False, False]])
    """
    scorable = ~torch.isnan(rewards)  # [N, G]
    return scorable & (scorable.sum(dim=1, keepdim=True) > 1)


def batch_normalize(advantages: Tensor, valid: Tensor | None = None) -> Tensor:
    """Whiten advantages over the batch (TRL RLOO ``normalize_advantages=True``).

    Args:
        advantages: Any shape.
        valid: Same shape, False for entries to leave out of the statistics and set to 0; None
            uses every entry. For RLOO pass :func:`leave_one_out_defined`, not just "scorable":
            a lone rollout's 0 is no advantage and would pull the mean and std (TRL's advantage
            is NaN there, so its nan-statistics skip it).

    Example:
        >>> batch_normalize(torch.tensor([1.0, 3.0])).round(decimals=3)
        tensor([-0.7070,  0.7070])
    """
    x = advantages if valid is None else advantages.masked_fill(~valid, float("nan"))
    return torch.nan_to_num((x - torch.nanmean(x)) / (nanstd(x) + STD_EPS), nan=0.0)


def whitened_leave_one_out(rewards: Tensor) -> Tensor:
    """RLOO advantages whitened over the batch (TRL ``RLOOConfig(normalize_advantages=True)``).

    Rollouts without a leave-one-out baseline (unscorable, or alone in their group) get 0 and are
    left out of the batch mean and std.

    Example:
        >>> whitened_leave_one_out(torch.tensor([[1.0, 0.0], [1.0, float("nan")]])).round(decimals=3)
        tensor([[ 0.7070, -0.7070],
                [ 0.0000,  0.0000]])
    """
    return batch_normalize(leave_one_out(rewards), valid=leave_one_out_defined(rewards))


Estimator = Callable[[Tensor], Tensor]

ADVANTAGES: dict[str, Estimator] = {
    "grpo": group_normalized,
    "dr_grpo": group_centered,
    "grpo_batch_std": batch_std_normalized,
    "rloo": leave_one_out,
    "rloo_normalized": whitened_leave_one_out,
}
"""Every estimator by name; each maps ``rewards [N, G]`` (NaN = unscorable) to ``[N, G]``.

``grpo_batch_std`` and ``rloo_normalized`` take statistics over the whole batch: call them with
every group of the optimizer step at once, not one group at a time.
"""


def compute_advantages(rewards: Tensor, estimator: str = "grpo") -> Tensor:
    """Advantages of ``rewards [N, G]`` by the named estimator.

    Example:
        >>> compute_advantages(torch.tensor([[1.0, 0.0, 0.5]]), "rloo")
        tensor([[ 0.7500, -0.7500,  0.0000]])
    """
    if estimator not in ADVANTAGES:
        raise ConfigError(f"unknown advantage estimator {estimator!r}; choose one of {sorted(ADVANTAGES)}")
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_groups, G], got shape {tuple(rewards.shape)}")
    return ADVANTAGES[estimator](rewards)


def kl_penalized_rewards(rewards: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor,
                         beta: float) -> Tensor:
    """RLOO-style KL in the reward: ``r - beta * sum_t (log pi_old - log pi_ref)`` per sequence.

    TRL's ``RLOOTrainer`` applies it before the leave-one-out baseline; the trainer does the same
    for the ``rloo`` loss with ``beta > 0`` (see ``toolgym.trainers.grpo.build_batch``).

    Args:
        rewards: ``[B]`` sequence rewards.
        old_logprobs: ``[B, L]`` sampling-policy log-probs.
        ref_logprobs: ``[B, L]`` reference-policy log-probs.
        mask: ``[B, L]`` trainable-token mask; tool/env tokens carry no KL.
        beta: KL coefficient.

    Example:
        >>> kl_penalized_rewards(torch.tensor([1.0]), torch.tensor([[-1.0, -1.0]]),
        ...                      torch.tensor([[-2.0, -9.0]]), torch.tensor([[1.0, 0.0]]), 0.5)
        tensor([0.5000])
    """
    keep = mask.bool()
    diff = torch.where(keep, old_logprobs - ref_logprobs, torch.zeros_like(old_logprobs))  # [B, L]
    return rewards - beta * diff.sum(-1)


# --------------------------------------------------------------------------------------------
# Per-turn rewards -> token-level advantages
# --------------------------------------------------------------------------------------------


def returns_to_go(turn_rewards: Tensor, gamma: float = 1.0) -> Tensor:
    """Discounted return from each turn on: ``R_t = r_t + gamma * R_{t+1}``.

    Args:
        turn_rewards: ``[..., T]`` reward of each turn; NaN marks turns the episode never had.

    Returns:
        ``[..., T]``; NaN where the turn is absent.

    Example:
        >>> returns_to_go(torch.tensor([[0.0, 1.0, float("nan")]]), gamma=0.5)
        tensor([[0.5000, 1.0000,    nan]])
    """
    present = ~torch.isnan(turn_rewards)
    r = torch.nan_to_num(turn_rewards, nan=0.0)
    out = torch.empty_like(r)
    running = torch.zeros_like(r[..., 0])
    for t in range(r.shape[-1] - 1, -1, -1):  # T is the number of turns: small
        running = r[..., t] + gamma * running
        out[..., t] = running
    return out.masked_fill(~present, float("nan"))


def turn_level_advantages(turn_rewards: Tensor, token_turns: Tensor, gamma: float = 1.0,
                          estimator: str = "grpo") -> Tensor:
    """Token-level advantages from per-turn rewards of multi-turn episodes.

    Each turn's return-to-go is computed per episode, then normalised *turn-aligned*: the
    baseline for turn ``t`` comes from the group's rollouts that reached turn ``t`` (the
    estimator runs on ``[N * T, G]`` with absent turns as NaN). Conditioning the baseline on
    having reached turn ``t`` depends only on earlier actions, so it stays a valid baseline for
    turn ``t``'s tokens, and it removes the bias that a pooled baseline has against late turns
    (whose return-to-go holds fewer rewards). A turn only one rollout reached gets advantage 0:
    there is nothing to compare it with. With outcome-only rewards, ``gamma=1`` and equal
    episode lengths the group-wise estimators (``grpo``, ``dr_grpo``, ``rloo``) reduce to their
    sequence-level result (``grpo_batch_std`` and ``rloo_normalized`` differ slightly: their batch
    spans every turn).

    Args:
        turn_rewards: ``[N, G, T]`` reward of each turn of each rollout; NaN for absent turns.
        token_turns: ``[N * G, L]`` turn index of each token; -1 for tokens that belong to no
            policy turn (prompt, tool output, padding).
        gamma: Discount over turns.
        estimator: Key of :data:`ADVANTAGES`.

    Returns:
        ``[N * G, L]`` advantages; 0 on tokens with turn -1.

    Example:
        >>> rewards = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])  # 1 group, G=2, T=2
        >>> turns = torch.tensor([[0, 0, -1, 1], [0, -1, 1, 1]])
        >>> turn_level_advantages(rewards, turns, estimator="dr_grpo")
        tensor([[ 0.5000,  0.5000,  0.0000,  0.5000],
                [-0.5000,  0.0000, -0.5000, -0.5000]])
    """
    n, g, t = turn_rewards.shape
    returns = returns_to_go(turn_rewards, gamma)  # [N, G, T]
    by_turn = returns.permute(0, 2, 1).reshape(n * t, g)  # [N*T, G]: one group per (task, turn)
    adv = compute_advantages(by_turn, estimator).reshape(n, t, g).permute(0, 2, 1).reshape(n * g, t)
    index = token_turns.clamp(min=0).long()  # [N*G, L]
    token_adv = torch.gather(adv, 1, index)  # [N*G, L]
    return token_adv.masked_fill(token_turns < 0, 0.0)


# --------------------------------------------------------------------------------------------
# DAPO batch shaping
# --------------------------------------------------------------------------------------------


def dynamic_sampling_filter(rewards: Tensor) -> Tensor:
    """DAPO dynamic sampling: which groups carry signal (not all scorable rewards equal).

    Groups whose rewards are all equal (or with fewer than two scorable rollouts) have zero
    advantage everywhere; the trainer drops them and samples more groups to refill the batch.

    Args:
        rewards: ``[N, G]``; NaN marks unscorable rollouts.

    Returns:
        ``[N]`` bool, True for groups to keep.

    Example:
        >>> dynamic_sampling_filter(torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, float("nan")]]))
        tensor([False,  True, False])
    """
    present = ~torch.isnan(rewards)
    hi = torch.where(present, rewards, torch.full_like(rewards, -torch.inf)).amax(dim=1)
    lo = torch.where(present, rewards, torch.full_like(rewards, torch.inf)).amin(dim=1)
    return hi > lo  # also False for groups with fewer than two scorable rollouts


def mask_truncated(mask: Tensor, truncated: Tensor) -> Tensor:
    """DAPO overlong filtering: truncated rollouts drop out of the loss entirely.

    Args:
        mask: ``[B, L]`` trainable-token mask.
        truncated: ``[B]`` bool, True where the rollout hit the length limit.

    Example:
        >>> mask_truncated(torch.ones(2, 2), torch.tensor([False, True]))
        tensor([[1., 1.],
                [0., 0.]])
    """
    return mask * (~truncated.bool()).unsqueeze(-1).to(mask.dtype)


def soft_overlong_penalty(lengths: Tensor, max_length: int, cache_length: int) -> Tensor:
    """DAPO soft overlong punishment (Eq. 13), added to the task reward.

    0 up to ``max_length - cache_length`` tokens, then falling linearly to -1 at ``max_length``,
    and -1 beyond it.

    Args:
        lengths: ``[B]`` completion lengths in tokens.
        max_length: L_max.
        cache_length: L_cache, the width of the linear ramp.

    Example:
        >>> soft_overlong_penalty(torch.tensor([70, 90, 100, 120]), max_length=100, cache_length=20)
        tensor([ 0.0000, -0.5000, -1.0000, -1.0000])
    """
    start = max_length - cache_length
    lengths = lengths.to(torch.get_default_dtype())
    ramp = (start - lengths) / max(cache_length, 1)  # cache_length == 0: the ramp is empty
    zero, minus_one = torch.zeros_like(lengths), torch.full_like(lengths, -1.0)
    return torch.where(lengths <= start, zero, torch.where(lengths <= max_length, ramp, minus_one))
