"""Policy-gradient losses of the GRPO family, as pure functions in one table.

Every loss in :data:`LOSSES` has the same signature and matches the loss of the same name in
TRL 1.16's ``GRPOTrainer`` (``rloo`` matches ``RLOOTrainer``; ``gspo`` is TRL's recommended GSPO
setup, ``loss_type="grpo"`` with ``importance_sampling_level="sequence"``).

KL to the reference policy: every loss but ``rloo`` adds ``beta`` times the k3 estimate to the
per-token loss, as ``GRPOTrainer`` does. ``rloo`` follows ``RLOOTrainer`` instead: the KL is a
reward penalty applied before the advantages are computed
(:func:`toolgym.trainers.advantages.kl_penalized_rewards`, wired in by
``toolgym.trainers.grpo.build_batch``), so the loss itself ignores ``beta``. ``rloo_k3`` is the
RLOO surrogate with the ``GRPOTrainer``-style k3 term in the loss (not a TRL loss).

A loss is assembled from three small parts, so the table needs no branching on the loss name:

* a *ratio level*: how per-token log-ratios ``log pi/pi_old`` become importance weights
  (per token, per-sequence mean as in GSPO, or per-sequence sum as in RLOO);
* a *surrogate*: the per-token objective built from those weights (PPO clip, CISPO, SAPO, VESPO);
* an *aggregator*: how per-token losses are reduced to a scalar (per-sequence mean, global
  token mean, Dr. GRPO constant, ...).

Gradient accumulation is exact because aggregators divide by :class:`BatchTotals`, the sizes of
the whole optimizer step, not of the micro-batch: summing the micro-batch losses of one step
gives the loss of the full batch (``bnpo`` is the deliberate exception: TRL defines it by the
local token count). Under data parallelism the totals must be the global ones, see
:meth:`BatchTotals.all_reduce`.

Masks: ``mask == 0`` marks tokens the policy did not produce (tool/env output, prompt, padding).
They are replaced by zeros before any arithmetic, so they reach no numerator, denominator,
ratio, KL or gradient, even when their log-probabilities are NaN or infinite.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from toolgym.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Configuration and records
# --------------------------------------------------------------------------------------------


@dataclass
class LossConfig:
    """Loss hyper-parameters; names follow TRL 1.16's ``GRPOConfig`` where it has one.

    Attributes:
        loss_type: Key of :data:`LOSSES`.
        epsilon_low: Lower clip range, ratio >= 1 - epsilon_low (TRL ``epsilon``).
        epsilon_high: Upper clip range (DAPO clip-higher); None means ``epsilon_low``. For
            ``cispo`` it is the cap on the importance weight itself, ``min(ratio, epsilon_high)``
            (TRL semantics, ScaleRL's epsilon_max); None there means :data:`CISPO_DEFAULT_CAP`,
            and a cap below 1 is rejected.
        delta: Two-sided clipping (INTELLECT-2): also cap the unclipped ratio at ``delta``.
        beta: KL coefficient, 0 disables it: of the k3 estimate in the loss, or for ``rloo`` of the
            summed log-ratio subtracted from the reward before the advantages (see module docs).
        importance_sampling_level: ``"token"``, ``"sequence"`` (mean log-ratio, GSPO) or
            ``"sequence_sum"`` (summed log-ratio, RLOO); None uses the loss's own default.
        use_bias_correction_kl: Multiply the per-token KL by the policy ratio (DeepSeek-V3.2).
        sampler_is_mode: Correction for sampler/trainer log-prob mismatch when sampler log-probs
            are given: ``"{token|sequence}_{truncate|mask}"`` (TRL
            ``vllm_importance_sampling_mode``); None disables it.
        sampler_is_clip_min: Lower bound C_min of the sampler ratio (truncate: clamp, mask: zero).
        sampler_is_clip_max: Upper bound C_max of the sampler ratio.
        off_policy_mask_threshold: DeepSeek-V3.2 off-policy sequence masking: drop sequences with
            negative advantage whose mean KL(sampler || policy) exceeds this; None disables it.
        max_completion_length: The constant normaliser of ``dr_grpo``.
        sapo_temperature_pos: SAPO gate temperature for positive advantages.
        sapo_temperature_neg: SAPO gate temperature for non-positive advantages.
        vespo_k_pos: VESPO Gamma-weight power for non-negative advantages.
        vespo_lambda_pos: VESPO Gamma-weight decay for non-negative advantages.
        vespo_k_neg: VESPO Gamma-weight power for negative advantages.
        vespo_lambda_neg: VESPO Gamma-weight decay for negative advantages.
    """

    loss_type: str = "dapo"
    epsilon_low: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    beta: float = 0.0
    importance_sampling_level: str | None = None
    use_bias_correction_kl: bool = True
    sampler_is_mode: str | None = "sequence_mask"
    sampler_is_clip_min: float | None = None
    sampler_is_clip_max: float | None = 3.0
    off_policy_mask_threshold: float | None = None
    max_completion_length: int = 256
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0

    def __post_init__(self) -> None:
        _check_choice("loss_type", self.loss_type, LOSSES)
        if self.loss_type == "cispo" and self.epsilon_high is not None and self.epsilon_high < 1.0:
            # A cap below 1 scales every on-policy token (ratio 1) down to the cap: the old default
            # (epsilon_low = 0.2) silently made CISPO 0.2 x REINFORCE. DAPO-style 0.28 is the usual slip.
            raise ConfigError(f"cispo caps the importance weight itself at epsilon_high "
                              f"({self.epsilon_high}); it must be >= 1 (ScaleRL uses {CISPO_DEFAULT_CAP}); "
                              f"leave it None for the default")
        if self.importance_sampling_level is not None:
            _check_choice("importance_sampling_level", self.importance_sampling_level, RATIO_LEVELS)
        if self.sampler_is_mode is not None:
            _check_choice("sampler_is_mode", self.sampler_is_mode, SAMPLER_IS_MODES)
            lo, hi = self.sampler_is_clip_min, self.sampler_is_clip_max
            if lo is None and hi is None:
                raise ConfigError("sampler_is_mode needs sampler_is_clip_min or sampler_is_clip_max")
            if lo is not None and hi is not None and lo >= hi:
                raise ConfigError(f"sampler_is_clip_min ({lo}) must be below sampler_is_clip_max ({hi})")
        if self.max_completion_length <= 0:
            raise ConfigError("max_completion_length must be positive")

    @property
    def eps_high(self) -> float:
        """The effective ``epsilon_high``: as set, else :data:`CISPO_DEFAULT_CAP` (cispo) or ``epsilon_low``."""
        if self.epsilon_high is not None:
            return self.epsilon_high
        return CISPO_DEFAULT_CAP if self.loss_type == "cispo" else self.epsilon_low


CISPO_DEFAULT_CAP = 5.0
"""CISPO's cap on the importance weight when ``epsilon_high`` is None.

MiniMax-M1 (arXiv 2506.13585, Eq. 4-5) clips the detached weight at ``1 + eps_high^IS`` with no
lower bound and tunes only the upper one; ScaleRL (arXiv 2510.13786) writes the cap itself as
``epsilon_max`` and TRL 1.16's ``GRPOConfig`` recommends 5.0 for it (Tinker defaults to 4.0).
Either way the cap is well above 1, so on-policy tokens keep weight 1.
"""


def _check_choice(name: str, value: str, choices: Sequence[str] | dict) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {sorted(choices)}")


@dataclass(frozen=True)
class BatchTotals:
    """Sizes of one whole optimizer step, the normalisers the aggregators divide by.

    Aggregators divide by these instead of the micro-batch's own sizes, so the micro-batch losses
    of a step sum to the full-batch loss and accumulated gradients equal full-batch gradients.

    Data parallelism (DDP/FSDP, which average gradients over the ``W`` ranks): this rank's own
    totals are wrong there. Dividing by the local token count gives each rank's token mean, and
    the average of those over-weights the tokens of ranks with fewer tokens, which is not DAPO's
    or CISPO's global token mean whenever ranks hold different token counts. Every rank must
    instead all-reduce (sum) ``num_tokens`` and ``num_sequences`` over the ranks and divide each
    by ``W`` (the averaging then restores the global sum); ``num_micro_batches`` stays local.
    :meth:`all_reduce` does exactly that: ``BatchTotals.of(local_masks).all_reduce()``.

    Attributes:
        num_tokens: Trainable tokens (``mask == 1``) in the step (one process), or the global
            count divided by the world size (data parallel).
        num_sequences: Sequences in the step, likewise.
        num_micro_batches: Micro-batches the step is split into on this rank (``bnpo`` only).
    """

    num_tokens: float
    num_sequences: float
    num_micro_batches: int = 1

    @classmethod
    def of(cls, masks: Sequence[Tensor]) -> BatchTotals:
        """Totals of a step made of the given micro-batch masks.

        Example:
            >>> BatchTotals.of([torch.ones(2, 3), torch.tensor([[1.0, 0.0, 0.0]])])
            BatchTotals(num_tokens=7.0, num_sequences=3.0, num_micro_batches=2)
        """
        tokens = sum(float(m.sum()) for m in masks)
        sequences = sum(float(m.shape[0]) for m in masks)
        return cls(num_tokens=tokens, num_sequences=sequences, num_micro_batches=len(masks))

    def data_parallel(self, global_tokens: float, global_sequences: float, world_size: int) -> BatchTotals:
        """The totals for one rank of ``world_size`` whose gradients are averaged over ranks.

        Args:
            global_tokens: Sum of ``num_tokens`` over all ranks (the step's trainable tokens).
            global_sequences: Sum of ``num_sequences`` over all ranks.
            world_size: Ranks the gradients are averaged over.

        Example:
            >>> BatchTotals(num_tokens=3.0, num_sequences=1.0).data_parallel(10.0, 4.0, world_size=2)
            BatchTotals(num_tokens=5.0, num_sequences=2.0, num_micro_batches=1)
        """
        # The gradient average divides by W; dividing the global count by W undoes it.
        return BatchTotals(num_tokens=global_tokens / world_size, num_sequences=global_sequences / world_size,
                           num_micro_batches=self.num_micro_batches)

    def all_reduce(self, group: Any = None) -> BatchTotals:
        """This rank's totals made global with one all-reduce (collective: every rank must call it).

        Sums ``num_tokens`` and ``num_sequences`` over the ranks of ``group`` and returns
        :meth:`data_parallel` of the sums; without an initialised process group it returns ``self``.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        nccl = dist.get_backend(group) == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        sums = torch.tensor([self.num_tokens, self.num_sequences], dtype=torch.float64, device=device)  # [2]
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        return self.data_parallel(float(sums[0]), float(sums[1]), dist.get_world_size(group))


@dataclass(frozen=True)
class LossOutput:
    """Result of a loss function.

    Attributes:
        loss: Differentiable scalar; this micro-batch's share of the step loss.
        metrics: Diagnostics over this micro-batch's trainable tokens (masked means), e.g.
            ``ratio/mean``, ``clip_ratio/low_mean``, ``clip_ratio/high_mean``,
            ``clip_ratio/region_mean``, ``kl``, ``sampler_is_ratio/mean``.
    """

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyTerms:
    """Masked per-token quantities shared by every surrogate (all zero on masked tokens)."""

    mask: Tensor  # [B, L] float, 1 on trainable tokens
    logprobs: Tensor  # [B, L] current policy log-probs, differentiable
    log_ratio: Tensor  # [B, L] log pi - log pi_old
    ratio: Tensor  # [B, L] at token level, [B, 1] at sequence levels
    advantages: Tensor  # [B, 1] or [B, L]
    sampler_ratio: Tensor | None  # [B, L] or [B, 1], no grad; None without sampler log-probs


# --------------------------------------------------------------------------------------------
# Small tensor helpers
# --------------------------------------------------------------------------------------------


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over trainable tokens; a per-sequence ``[B, 1]`` ``x`` averages sequences.

    Mirrors TRL's logging reduction, so metrics are comparable.

    Example:
        >>> masked_mean(torch.tensor([[1.0, 5.0]]), torch.tensor([[1.0, 0.0]]))
        tensor(1.)
    """
    if x.shape[-1] == 1:  # [B, 1]: one value per sequence
        return x.float().mean()
    x = x.expand_as(mask)  # [B, L]
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def sequence_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over sequences of each sequence's mean over its trainable tokens: each sequence counts once.

    For metrics of sequence-level quantities (a GSPO ratio, a VESPO weight). The trainer passes
    ``[B, L]`` advantages, so such a metric would otherwise be token-weighted and long sequences
    would dominate it. Sequences without a trainable token take no part in the loss and are left out.

    Args:
        x: ``[B, 1]`` or ``[B, L]``.
        mask: ``[B, L]`` trainable-token mask.

    Example:
        >>> clipped = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # a long clipped sequence, a short one not
        >>> sequence_mean(clipped, torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))  # masked_mean gives 0.75
        tensor(0.5000)
    """
    keep = mask.bool()  # [B, L]
    dtype = torch.promote_types(_reduction_dtype(x), _reduction_dtype(mask))
    zero = torch.zeros((), dtype=dtype, device=x.device)
    values = torch.where(keep, x.expand_as(mask).to(dtype), zero)  # [B, L]
    counts = keep.sum(-1)  # [B]
    per_seq = values.sum(-1) / counts.clamp(min=1)  # [B], 0 for sequences without a trainable token
    return per_seq.sum() / (counts > 0).sum().clamp(min=1)


def _level_mean(x: Tensor, t: PolicyTerms) -> Tensor:
    # A metric over sequence-level ratios counts sequences; over token ratios, tokens (as TRL).
    return sequence_mean(x, t.mask) if t.ratio.shape[-1] == 1 else masked_mean(x, t.mask)


def _reduction_dtype(x: Tensor) -> torch.dtype:
    # Token counts and sums must not be taken in half precision: bf16 cannot even count to 257.
    return torch.promote_types(x.dtype, torch.float32)


def _zero_masked(x: Tensor, keep: Tensor) -> Tensor:
    # torch.where rather than multiplication: NaN/inf on masked tokens must not leak (0 * nan = nan),
    # and the gradient flowing to masked positions is exactly zero.
    return torch.where(keep, x, torch.zeros_like(x))


def k3_kl(ref_logprobs: Tensor, logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref): ``exp(r - p) - (r - p) - 1`` (always >= 0).

    Example:
        >>> k3_kl(torch.tensor([0.0]), torch.tensor([0.0]))
        tensor([0.])
    """
    diff = ref_logprobs - logprobs
    return torch.exp(diff) - diff - 1


# --------------------------------------------------------------------------------------------
# Ratio levels: per-token log-ratios [B, L] -> importance weights [B, L] or [B, 1]
# --------------------------------------------------------------------------------------------


def _token_level(log_ratio: Tensor, mask: Tensor) -> Tensor:
    return torch.exp(log_ratio)  # [B, L]


def _sequence_mean_level(log_ratio: Tensor, mask: Tensor) -> Tensor:
    # GSPO: geometric mean of the token ratios of each sequence.
    mean = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # [B]
    return torch.exp(mean).unsqueeze(-1)  # [B, 1]


def _sequence_sum_level(log_ratio: Tensor, mask: Tensor) -> Tensor:
    # RLOO: ratio of whole-sequence probabilities.
    return torch.exp((log_ratio * mask).sum(-1, keepdim=True))  # [B, 1]


RATIO_LEVELS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "token": _token_level,
    "sequence": _sequence_mean_level,
    "sequence_sum": _sequence_sum_level,
}


# --------------------------------------------------------------------------------------------
# Sampler importance sampling: trainer log-probs vs the inference engine's log-probs
# --------------------------------------------------------------------------------------------


def _truncate(ratio: Tensor, cfg: LossConfig) -> Tensor:
    return torch.clamp(ratio, min=cfg.sampler_is_clip_min, max=cfg.sampler_is_clip_max)


def _mask_out(ratio: Tensor, cfg: LossConfig) -> Tensor:
    lo = -math.inf if cfg.sampler_is_clip_min is None else cfg.sampler_is_clip_min
    hi = math.inf if cfg.sampler_is_clip_max is None else cfg.sampler_is_clip_max
    return ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)


def _per_token(diff: Tensor) -> Tensor:
    return diff  # [B, L]


def _per_sequence(diff: Tensor) -> Tensor:
    return diff.sum(-1, keepdim=True)  # [B, 1]: log of the sequence probability ratio


SAMPLER_IS_MODES: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, LossConfig], Tensor]]] = {
    "token_truncate": (_per_token, _truncate),
    "token_mask": (_per_token, _mask_out),
    "sequence_truncate": (_per_sequence, _truncate),
    "sequence_mask": (_per_sequence, _mask_out),
}


@torch.no_grad()
def sampler_is_ratio(old_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, cfg: LossConfig) -> Tensor:
    """Importance weight ``pi_old / pi_sampler`` correcting sampler/trainer mismatch (no grad).

    Tokens the sampler could not score (NaN) get weight 1, as in TRL.

    Args:
        old_logprobs: ``[B, L]`` trainer log-probs of the sampled tokens at sampling time.
        sampler_logprobs: ``[B, L]`` the inference engine's log-probs of the same tokens.
        mask: ``[B, L]`` trainable-token mask.
        cfg: Uses ``sampler_is_mode`` and the clip bounds.

    Returns:
        ``[B, L]`` for token modes, ``[B, 1]`` for sequence modes.

    Example:
        >>> cfg = LossConfig(sampler_is_mode="token_truncate", sampler_is_clip_max=2.0)
        >>> sampler_is_ratio(torch.tensor([[0.0, 0.0]]), torch.tensor([[-1.0, 0.0]]),
        ...                  torch.ones(1, 2), cfg)
        tensor([[2., 1.]])
    """
    reduce, bound = SAMPLER_IS_MODES[cfg.sampler_is_mode]
    diff = torch.nan_to_num(_zero_masked(old_logprobs - sampler_logprobs, mask.bool()), nan=0.0)  # [B, L]
    return bound(torch.exp(reduce(diff)), cfg)


def off_policy_sequence_mask(
    advantages: Tensor, logprobs: Tensor, sampling_logprobs: Tensor, mask: Tensor, threshold: float
) -> Tensor:
    """DeepSeek-V3.2 off-policy sequence mask: 0 for negative-advantage sequences that drifted.

    Returns:
        ``[B, 1]``: 1 keeps a sequence, 0 drops it (advantage < 0 and mean KL > threshold).
    """
    kl = torch.nan_to_num(sampling_logprobs - logprobs.detach(), nan=0.0)  # [B, L]
    mean_kl = (kl * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)  # [B, 1]
    keep = (advantages >= 0) | (mean_kl <= threshold)  # [B, 1] or [B, L]
    return keep.to(mask.dtype)


# --------------------------------------------------------------------------------------------
# Surrogates: PolicyTerms -> (per-token loss [B, L] or [B, 1], metric tensors)
# --------------------------------------------------------------------------------------------

Metrics = dict[str, Tensor]


def clipped_surrogate(t: PolicyTerms, cfg: LossConfig) -> tuple[Tensor, Metrics]:
    """PPO clipped objective with clip-higher and optional two-sided clipping (``delta``)."""
    ratio = t.ratio
    clipped = torch.clamp(ratio, 1 - cfg.epsilon_low, 1 + cfg.eps_high)
    if cfg.delta is not None:
        ratio = torch.clamp(ratio, max=cfg.delta)
    loss = -torch.min(ratio * t.advantages, clipped * t.advantages)
    # Computed on the delta-capped ratio, as TRL does.
    low = (ratio < 1 - cfg.epsilon_low) & (t.advantages < 0)
    high = (ratio > 1 + cfg.eps_high) & (t.advantages > 0)
    metrics = {
        "clip_ratio/low_mean": _level_mean(low.float(), t),
        "clip_ratio/high_mean": _level_mean(high.float(), t),
        "clip_ratio/region_mean": _level_mean((low | high).float(), t),
    }
    return loss, metrics


def cispo_surrogate(t: PolicyTerms, cfg: LossConfig) -> tuple[Tensor, Metrics]:
    """CISPO (MiniMax-M1): REINFORCE on log-probs weighted by the detached, capped ratio.

    The cap is ``epsilon_high`` itself, or :data:`CISPO_DEFAULT_CAP` when it is None (whatever
    ``cfg.loss_type`` says: the table key, not the config, chose this surrogate).
    """
    cap = CISPO_DEFAULT_CAP if cfg.epsilon_high is None else cfg.epsilon_high
    weight = torch.clamp(t.ratio, max=cap).detach()
    loss = -weight * t.advantages * t.logprobs  # [B, L]
    clipped = (t.ratio > cap) & (t.advantages > 0)
    return loss, {"cispo_clip_ratio": _level_mean(clipped.float(), t)}


def sapo_surrogate(t: PolicyTerms, cfg: LossConfig) -> tuple[Tensor, Metrics]:
    """SAPO: a temperature-controlled sigmoid gate replaces the hard clip."""
    temp = torch.where(t.advantages > 0, cfg.sapo_temperature_pos, cfg.sapo_temperature_neg)
    gate = torch.sigmoid(temp * (t.ratio - 1)) * 4 / temp
    return -gate * t.advantages, {}


@torch.no_grad()
def vespo_weights(t: PolicyTerms, cfg: LossConfig) -> Tensor:
    """VESPO Gamma weight ``phi(w) = exp(lam) * w^k * exp(-lam * w)`` of the sequence ratio ``w``.

    ``w`` is the product of token ratios (times the sampler weight when given), computed in log
    space with TRL's clamps; phi(1) == 1. Returns ``[B, 1]``, detached.
    """
    lower = math.log(1e-8)
    seq_log = (torch.clamp(t.log_ratio, -20.0, 20.0) * t.mask).sum(-1, keepdim=True)  # [B, 1]
    if t.sampler_ratio is not None:
        seq_log = seq_log + torch.clamp(torch.log(t.sampler_ratio), lower, 20.0).sum(-1, keepdim=True)
    log_w = torch.clamp(seq_log, lower, 20.0)
    nonneg = t.advantages >= 0
    k = torch.where(nonneg, cfg.vespo_k_pos, cfg.vespo_k_neg)
    lam = torch.where(nonneg, cfg.vespo_lambda_pos, cfg.vespo_lambda_neg).clamp(min=1e-4)
    phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
    return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def vespo_surrogate(t: PolicyTerms, cfg: LossConfig) -> tuple[Tensor, Metrics]:
    """VESPO: REINFORCE on log-probs weighted by a smooth Gamma function of the sequence ratio."""
    phi = vespo_weights(t, cfg)  # [B, 1], or [B, L] when the advantages' sign varies along a sequence
    return -phi * t.advantages * t.logprobs, {"vespo/phi_seq_mean": sequence_mean(phi, t.mask)}


# --------------------------------------------------------------------------------------------
# Aggregators: per-token loss [B, L] -> scalar share of the step loss
# --------------------------------------------------------------------------------------------


def per_sequence_mean(loss: Tensor, mask: Tensor, totals: BatchTotals, cfg: LossConfig) -> Tensor:
    """GRPO: mean over each sequence's tokens, then mean over the step's sequences."""
    seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # [B]
    return seq.sum() / totals.num_sequences


def global_token_mean(loss: Tensor, mask: Tensor, totals: BatchTotals, cfg: LossConfig) -> Tensor:
    """DAPO/CISPO/VESPO: sum over tokens / trainable tokens of the whole step."""
    return (loss * mask).sum() / max(float(totals.num_tokens), 1.0)


def local_token_mean(loss: Tensor, mask: Tensor, totals: BatchTotals, cfg: LossConfig) -> Tensor:
    """BNPO: token mean of this micro-batch, averaged over micro-batches (TRL's definition)."""
    return (loss * mask).sum() / mask.sum().clamp(min=1.0) / totals.num_micro_batches


def constant_normaliser(loss: Tensor, mask: Tensor, totals: BatchTotals, cfg: LossConfig) -> Tensor:
    """Dr. GRPO: sum over tokens / (sequences * max_completion_length)."""
    return (loss * mask).sum() / (totals.num_sequences * cfg.max_completion_length)


def per_sequence_sum(loss: Tensor, mask: Tensor, totals: BatchTotals, cfg: LossConfig) -> Tensor:
    """LUSPO: sum over each sequence's tokens (length-weighted), mean over sequences."""
    return (loss * mask).sum() / totals.num_sequences


# --------------------------------------------------------------------------------------------
# Assembly and the table
# --------------------------------------------------------------------------------------------

Surrogate = Callable[[PolicyTerms, LossConfig], tuple[Tensor, Metrics]]
Aggregate = Callable[[Tensor, Tensor, BatchTotals, LossConfig], Tensor]


class PolicyLoss(Protocol):
    """What the trainer calls; any callable of this shape can be added to :data:`LOSSES`."""

    def __call__(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor | None,
        advantages: Tensor,
        mask: Tensor,
        cfg: LossConfig,
        totals: BatchTotals | None = None,
        ref_logprobs: Tensor | None = None,
        sampler_logprobs: Tensor | None = None,
    ) -> LossOutput: ...


class LossFn:
    """A loss assembled from a ratio level, a surrogate and an aggregator (see module docs).

    Instances are pure functions of their arguments; they live in :data:`LOSSES`.
    """

    def __init__(self, name: str, surrogate: Surrogate, aggregate: Aggregate, level: str = "token",
                 folds_sampler_ratio: bool = False, kl_in_reward: bool = False) -> None:
        self.name = name
        self.surrogate = surrogate
        self.aggregate = aggregate
        self.level = level
        # VESPO puts the sampler weight inside its Gamma weight instead of multiplying the loss.
        self.folds_sampler_ratio = folds_sampler_ratio
        # RLOO (TRL) penalises the reward by beta * KL before the advantages: the loss has no KL term.
        self.kl_in_reward = kl_in_reward

    def __repr__(self) -> str:
        return f"LossFn({self.name!r})"

    def __call__(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor | None,
        advantages: Tensor,
        mask: Tensor,
        cfg: LossConfig,
        totals: BatchTotals | None = None,
        ref_logprobs: Tensor | None = None,
        sampler_logprobs: Tensor | None = None,
    ) -> LossOutput:
        """Loss of one micro-batch.

        Args:
            logprobs: ``[B, L]`` current-policy log-probs of the sampled tokens (differentiable).
            old_logprobs: ``[B, L]`` log-probs of the policy that generated the batch, as
                recomputed by the trainer; None means on-policy (``logprobs.detach()``).
            advantages: ``[B]`` per-sequence or ``[B, L]`` per-token advantages.
            mask: ``[B, L]`` 1 on tokens the policy produced and should learn from, else 0.
            cfg: Hyper-parameters; ``cfg.loss_type`` is not consulted (the table key is).
            totals: Sizes of the whole optimizer step; None means this micro-batch is the step.
            ref_logprobs: ``[B, L]`` reference-policy log-probs; required when ``cfg.beta != 0``
                (unused by losses whose KL is in the reward, ``kl_in_reward``).
            sampler_logprobs: ``[B, L]`` inference-engine log-probs; enables the sampler
                importance-sampling correction when ``cfg.sampler_is_mode`` is set.

        Returns:
            The scalar loss share and metrics.
        """
        beta = 0.0 if self.kl_in_reward else cfg.beta  # RLOO: the advantages already carry the KL
        if beta != 0.0 and ref_logprobs is None:
            raise ConfigError("beta != 0 needs ref_logprobs")
        keep = mask.bool()  # [B, L]
        maskf = keep.to(_reduction_dtype(logprobs))
        totals = totals or BatchTotals(float(maskf.sum()), float(mask.shape[0]))
        terms = self._terms(logprobs, old_logprobs, advantages, keep, cfg, sampler_logprobs)
        per_token, metrics = self.surrogate(terms, cfg)
        if cfg.off_policy_mask_threshold is not None:
            sampling = old_logprobs if sampler_logprobs is None else sampler_logprobs
            sampling = logprobs.detach() if sampling is None else _zero_masked(sampling, keep)
            per_token = per_token * off_policy_sequence_mask(
                terms.advantages, terms.logprobs, sampling, maskf, cfg.off_policy_mask_threshold
            )
        if terms.sampler_ratio is not None and not self.folds_sampler_ratio:
            per_token = per_token * terms.sampler_ratio
        if beta != 0.0:
            kl = k3_kl(_zero_masked(ref_logprobs, keep), terms.logprobs)  # [B, L]
            kl = kl * terms.ratio if cfg.use_bias_correction_kl else kl
            per_token = per_token + beta * kl
            metrics["kl"] = masked_mean(kl.detach(), maskf)
        loss = self.aggregate(per_token.expand_as(maskf), maskf, totals, cfg)
        metrics["ratio/mean"] = _level_mean(terms.ratio.detach(), terms)
        if terms.sampler_ratio is not None:
            metrics["sampler_is_ratio/mean"] = masked_mean(terms.sampler_ratio, maskf)
        return LossOutput(loss=loss, metrics={k: float(v) for k, v in metrics.items()})

    def _terms(self, logprobs: Tensor, old_logprobs: Tensor | None, advantages: Tensor, keep: Tensor,
               cfg: LossConfig, sampler_logprobs: Tensor | None) -> PolicyTerms:
        maskf = keep.to(_reduction_dtype(logprobs))  # [B, L]
        lp = _zero_masked(logprobs, keep)  # [B, L]
        old = lp.detach() if old_logprobs is None else _zero_masked(old_logprobs.detach(), keep)
        log_ratio = lp - old  # [B, L], 0 on masked tokens
        ratio = RATIO_LEVELS[cfg.importance_sampling_level or self.level](log_ratio, maskf)
        adv = advantages.unsqueeze(-1) if advantages.dim() == 1 else _zero_masked(advantages, keep)
        use_sampler = sampler_logprobs is not None and cfg.sampler_is_mode is not None
        sampler = sampler_is_ratio(old, sampler_logprobs, maskf, cfg) if use_sampler else None
        return PolicyTerms(maskf, lp, log_ratio, ratio, adv, sampler)


LOSSES: dict[str, PolicyLoss] = {
    "grpo": LossFn("grpo", clipped_surrogate, per_sequence_mean),
    "dr_grpo": LossFn("dr_grpo", clipped_surrogate, constant_normaliser),
    "dapo": LossFn("dapo", clipped_surrogate, global_token_mean),
    "bnpo": LossFn("bnpo", clipped_surrogate, local_token_mean),
    "gspo": LossFn("gspo", clipped_surrogate, per_sequence_mean, level="sequence"),
    "luspo": LossFn("luspo", clipped_surrogate, per_sequence_sum, level="sequence"),
    "rloo": LossFn("rloo", clipped_surrogate, per_sequence_mean, level="sequence_sum", kl_in_reward=True),
    "rloo_k3": LossFn("rloo_k3", clipped_surrogate, per_sequence_mean, level="sequence_sum"),
    "cispo": LossFn("cispo", cispo_surrogate, global_token_mean),
    "sapo": LossFn("sapo", sapo_surrogate, per_sequence_mean),
    "vespo": LossFn("vespo", vespo_surrogate, global_token_mean, folds_sampler_ratio=True),
}
"""Every loss by name; each is called as ``LOSSES[name](logprobs, old_logprobs, advantages, mask, cfg, ...)``."""


def kl_in_reward(cfg: LossConfig) -> bool:
    """Whether ``cfg``'s KL penalty belongs in the rewards, before the advantages (``rloo`` with ``beta != 0``).

    Example:
        >>> [kl_in_reward(LossConfig(loss_type=name, beta=0.05)) for name in ("rloo", "rloo_k3", "dapo")]
        [True, False, False]
    """
    return cfg.beta != 0.0 and bool(getattr(LOSSES[cfg.loss_type], "kl_in_reward", False))


def compute_loss(
    logprobs: Tensor,
    old_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    cfg: LossConfig,
    totals: BatchTotals | None = None,
    ref_logprobs: Tensor | None = None,
    sampler_logprobs: Tensor | None = None,
) -> LossOutput:
    """The loss named by ``cfg.loss_type`` (see :meth:`LossFn.__call__` for the arguments).

    Example:
        >>> lp = torch.zeros(2, 3, requires_grad=True)
        >>> out = compute_loss(lp, None, torch.tensor([1.0, -1.0]), torch.ones(2, 3),
        ...                    LossConfig(loss_type="dapo"))
        >>> out.loss.item(), out.metrics["ratio/mean"]
        (0.0, 1.0)
    """
    return LOSSES[cfg.loss_type](logprobs, old_logprobs, advantages, mask, cfg, totals, ref_logprobs,
                                 sampler_logprobs)
