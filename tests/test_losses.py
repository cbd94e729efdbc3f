"""GRPO-family losses: parity with TRL 1.16, exact gradient accumulation, masking, config."""

from __future__ import annotations

import doctest
import inspect
import math
import textwrap
from collections import defaultdict
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.rloo_trainer import RLOOTrainer

import toolgym.trainers.losses as losses_module
from toolgym.errors import ConfigError
from toolgym.trainers.losses import LOSSES, BatchTotals, LossConfig, compute_loss, sampler_is_ratio

B, L = 6, 7
DTYPE = torch.float64
TRL_LOSSES = ["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"]


# ---- a synthetic batch ----------------------------------------------------------------------
def make_batch(seed: int, token_advantages: bool = False) -> SimpleNamespace:
    """Random log-probs with padding (completion_mask) and tool-output tokens (tool_mask)."""
    g = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(B, L, generator=g, dtype=DTYPE) * 3  # [B, L]
    old = logprobs + 0.3 * torch.randn(B, L, generator=g, dtype=DTYPE)  # ratios well outside the clip
    sampler = old + 0.2 * torch.randn(B, L, generator=g, dtype=DTYPE)
    ref = logprobs + 0.5 * torch.randn(B, L, generator=g, dtype=DTYPE)
    lengths = torch.tensor([7, 5, 1, 6, 3, 7])
    completion_mask = (torch.arange(L) < lengths.unsqueeze(1)).long()  # [B, L] right padding
    tool_mask = torch.ones(B, L, dtype=torch.long)
    tool_mask[0, 2:4] = 0  # a tool response inside a completion
    tool_mask[3, 1] = 0
    shape = (B, L) if token_advantages else (B,)
    advantages = torch.randn(*shape, generator=g, dtype=DTYPE)
    return SimpleNamespace(logprobs=logprobs, old=old, sampler=sampler, ref=ref, advantages=advantages,
                           completion_mask=completion_mask, tool_mask=tool_mask,
                           mask=completion_mask * tool_mask)


# ---- calling TRL's own code -----------------------------------------------------------------
class FakeAccelerator:
    """Single-process stand-in for accelerate: gathers and reductions are identities."""

    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    gather_for_metrics = gather

    def reduce(self, x, reduction="sum"):
        return x


def _trl_trainer(cls, cfg: LossConfig, loss_type: str, level: str, logprobs: torch.Tensor, ga_steps: int):
    """A trainer object with only the attributes its ``_compute_loss`` reads."""
    trainer = object.__new__(cls)
    trainer.args = SimpleNamespace(
        use_bias_correction_kl=cfg.use_bias_correction_kl, delta=cfg.delta,
        sapo_temperature_pos=cfg.sapo_temperature_pos, sapo_temperature_neg=cfg.sapo_temperature_neg,
        vespo_k_pos=cfg.vespo_k_pos, vespo_lambda_pos=cfg.vespo_lambda_pos,
        vespo_k_neg=cfg.vespo_k_neg, vespo_lambda_neg=cfg.vespo_lambda_neg,
        steps_per_generation=ga_steps,
    )
    trainer.__dict__.update(
        loss_type=loss_type, importance_sampling_level=level, beta=cfg.beta,
        epsilon_low=cfg.epsilon_low, epsilon_high=cfg.eps_high,
        max_completion_length=cfg.max_completion_length, top_entropy_quantile=1.0,
        off_policy_mask_threshold=cfg.off_policy_mask_threshold, aux_loss_enabled=False,
        _entropy_bonus_enabled=False, use_vllm=cfg.sampler_is_mode is not None,
        vllm_importance_sampling_correction=cfg.sampler_is_mode is not None,
        vllm_importance_sampling_mode=cfg.sampler_is_mode,
        vllm_importance_sampling_clip_min=cfg.sampler_is_clip_min,
        vllm_importance_sampling_clip_max=cfg.sampler_is_clip_max,
        current_gradient_accumulation_steps=ga_steps, model=torch.nn.Linear(1, 1),
        accelerator=FakeAccelerator(), _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    # The model forward is replaced by the log-probs under test; everything after it is TRL's code.
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logprobs, torch.zeros_like(logprobs), None)
    return trainer


def _trl_block(source: str, start: str, end: str) -> str:
    """A statement block cut out of a TRL method, dedented so it can be executed on its own."""
    i = source.rindex("\n", 0, source.index(start)) + 1  # from the start of the line, for dedent
    return textwrap.dedent(source[i: source.index(end, i)])


IS_BLOCK = _trl_block(
    inspect.getsource(GRPOTrainer._generate_and_score_completions),
    "if self.use_vllm and self.vllm_importance_sampling_correction:\n",
    "# Compute the per-token log probabilities for the reference model",
)


def trl_is_ratio(trainer, batch) -> torch.Tensor:
    """TRL's own sampler importance-sampling ratio (the block inside generation)."""
    scope = {"self": trainer, "torch": torch, "math": math, "completion_mask": batch.completion_mask,
             "tool_mask": batch.tool_mask, "old_per_token_logps": batch.old,
             "sampling_per_token_logps": batch.sampler}
    exec(IS_BLOCK, scope)
    return scope["vllm_importance_sampling_ratio"]


def trl_grpo(cfg: LossConfig, loss_type: str, level: str, batch, ga_steps: int = 1, num_items=None):
    logprobs = batch.logprobs.clone().requires_grad_(True)
    trainer = _trl_trainer(GRPOTrainer, cfg, loss_type, level, logprobs, ga_steps)
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, L, dtype=torch.long), "completion_mask": batch.completion_mask,
        "tool_mask": batch.tool_mask, "advantages": batch.advantages, "old_per_token_logps": batch.old,
        "num_items_in_batch": torch.tensor(float(batch.mask.sum() if num_items is None else num_items)),
    }
    if cfg.beta:
        inputs["ref_per_token_logps"] = batch.ref
    if cfg.sampler_is_mode is not None:
        inputs["sampling_per_token_logps"] = batch.sampler
        inputs["importance_sampling_ratio"] = trl_is_ratio(trainer, batch)
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), logprobs.grad, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def trl_rloo(cfg: LossConfig, batch, ga_steps: int = 1):
    logprobs = batch.logprobs.clone().requires_grad_(True)
    trainer = _trl_trainer(RLOOTrainer, cfg, "rloo", "sequence_sum", logprobs, ga_steps)
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, L, dtype=torch.long), "completion_mask": batch.completion_mask,
        "advantages": batch.advantages, "old_logps": (batch.old * batch.completion_mask).sum(1),
    }
    # RLOOTrainer leaves the division by accumulation steps to the HF Trainer.
    loss = trainer._compute_loss(trainer.model, inputs) / ga_steps
    loss.backward()
    return loss.detach(), logprobs.grad, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def ours(cfg: LossConfig, batch, mask, totals=None):
    logprobs = batch.logprobs.clone().requires_grad_(True)
    out = compute_loss(logprobs, batch.old, batch.advantages, mask, cfg, totals=totals,
                       ref_logprobs=batch.ref if cfg.beta else None,
                       sampler_logprobs=batch.sampler if cfg.sampler_is_mode else None)
    out.loss.backward()
    return out.loss.detach(), logprobs.grad, out.metrics


def assert_same(a, b, metric_names):
    (loss_a, grad_a, m_a), (loss_b, grad_b, m_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad_a, grad_b, rtol=1e-9, atol=1e-12)
    for name in metric_names & m_b.keys():
        # TRL reduces metrics in float32
        assert m_a[name] == pytest.approx(m_b[name], rel=1e-6, abs=1e-9), name
    assert metric_names & m_b.keys() <= m_a.keys()


# ---- parity ---------------------------------------------------------------------------------
# Each scenario turns on a different group of options; every loss type runs under each.
SCENARIOS = {
    "plain": dict(sampler_is_mode=None),
    "clip_higher_kl": dict(epsilon_high=0.28, beta=0.04, sampler_is_mode=None),
    "kl_no_bias_correction": dict(beta=0.1, use_bias_correction_kl=False, sampler_is_mode=None),
    "delta_token_truncate": dict(delta=1.3, sampler_is_mode="token_truncate", sampler_is_clip_min=0.8,
                                 sampler_is_clip_max=1.2),
    "token_mask": dict(sampler_is_mode="token_mask", sampler_is_clip_min=0.8, sampler_is_clip_max=1.25),
    "sequence_truncate": dict(sampler_is_mode="sequence_truncate", sampler_is_clip_max=1.5, beta=0.02),
    "sequence_mask_opsm": dict(sampler_is_mode="sequence_mask", sampler_is_clip_max=2.0,
                               off_policy_mask_threshold=0.02),
}
METRICS = {"clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "kl",
           "cispo_clip_ratio", "vespo/phi_seq_mean"}
# Metrics of sequence-level weights: ours count each sequence once. TRL token-weights them when the
# advantages are [B, L]; tests/test_loss_semantics.py checks them for that case.
SEQUENCE_METRICS = METRICS - {"kl"}
CISPO_CAP = 1.28  # clip-higher for CISPO: its epsilon_high is the cap itself, so 1 + 0.28


def scenario_config(loss_type: str, scenario: str, **extra) -> LossConfig:
    """The scenario's options for ``loss_type``; CISPO reads DAPO's clip-higher 0.28 as the cap 1.28."""
    options = {**SCENARIOS[scenario], **extra}
    if loss_type == "cispo" and options.get("epsilon_high") is not None:
        options["epsilon_high"] += 1.0
    return LossConfig(loss_type=loss_type, **options)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("loss_type", TRL_LOSSES)
@pytest.mark.parametrize("token_advantages", [False, True])
def test_matches_trl_grpo_trainer(loss_type, scenario, token_advantages):
    cfg = scenario_config(loss_type, scenario, max_completion_length=L)
    batch = make_batch(seed=len(scenario) + 7 * token_advantages, token_advantages=token_advantages)
    level = "sequence" if loss_type == "luspo" else "token"  # each loss's own default level
    per_sequence = token_advantages and (level == "sequence" or loss_type == "vespo")
    metrics = METRICS - SEQUENCE_METRICS if per_sequence else METRICS
    assert_same(ours(cfg, batch, batch.mask), trl_grpo(cfg, loss_type, level, batch), metrics)


@pytest.mark.parametrize(("loss_type", "level"), [*((t, "sequence") for t in ["grpo", "dapo", "sapo", "cispo",
                                                                                "bnpo", "dr_grpo"]),
                                                   ("luspo", "token")])
@pytest.mark.parametrize("scenario", ["plain", "clip_higher_kl", "sequence_mask_opsm", "token_mask"])
def test_non_default_ratio_level_matches_trl(loss_type, level, scenario):
    cfg = scenario_config(loss_type, scenario, importance_sampling_level=level)
    batch = make_batch(seed=3)
    assert_same(ours(cfg, batch, batch.mask), trl_grpo(cfg, loss_type, level, batch), METRICS)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_gspo_is_trl_grpo_at_sequence_level(scenario):
    cfg = LossConfig(**{"loss_type": "gspo", "epsilon_low": 3e-4, "epsilon_high": 4e-4, **SCENARIOS[scenario]})
    batch = make_batch(seed=11)
    assert_same(ours(cfg, batch, batch.mask), trl_grpo(cfg, "grpo", "sequence", batch), METRICS)


@pytest.mark.parametrize("epsilon_high", [None, 0.28])
def test_rloo_matches_trl_rloo_trainer(epsilon_high):
    cfg = LossConfig(loss_type="rloo", epsilon_high=epsilon_high, sampler_is_mode=None)
    batch = make_batch(seed=5)
    got = ours(cfg, batch, batch.completion_mask)  # TRL's RLOO has no tool mask
    assert_same(got, trl_rloo(cfg, batch), {"clip_ratio/low_mean", "clip_ratio/high_mean"})


@pytest.mark.parametrize("loss_type", TRL_LOSSES)
def test_step_totals_match_trl_under_gradient_accumulation(loss_type):
    """One micro-batch of a 3-micro-batch step: our BatchTotals reproduce TRL's normalisers."""
    cfg = LossConfig(loss_type=loss_type, max_completion_length=L, beta=0.01,
                     epsilon_high=CISPO_CAP if loss_type == "cispo" else 0.28,
                     sampler_is_mode="token_truncate", sampler_is_clip_max=1.5)
    batch = make_batch(seed=2)
    step_tokens = float(batch.mask.sum()) + 40.0  # the other micro-batches' tokens
    totals = BatchTotals(num_tokens=step_tokens, num_sequences=3 * B, num_micro_batches=3)
    level = "sequence" if loss_type == "luspo" else "token"
    expected = trl_grpo(cfg, loss_type, level, batch, ga_steps=3, num_items=step_tokens)
    assert_same(ours(cfg, batch, batch.mask, totals), expected, METRICS)


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
@pytest.mark.parametrize("bounds", [(None, 1.3), (0.7, None), (0.8, 1.25)])
def test_sampler_ratio_matches_trl(mode, bounds):
    cfg = LossConfig(sampler_is_mode=mode, sampler_is_clip_min=bounds[0], sampler_is_clip_max=bounds[1])
    batch = make_batch(seed=9)
    batch.sampler[1, 2] = float("nan")  # a token the sampler could not score: weight 1
    trainer = _trl_trainer(GRPOTrainer, cfg, "dapo", "token", batch.logprobs, 1)
    expected = trl_is_ratio(trainer, batch)
    torch.testing.assert_close(sampler_is_ratio(batch.old, batch.sampler, batch.mask, cfg), expected)


# ---- gradient accumulation ------------------------------------------------------------------
class TinyPolicy(torch.nn.Module):
    """A bigram policy: log-prob of each token given the previous one."""

    def __init__(self, vocab: int = 5) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0),
                                                     dtype=DTYPE))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [B, L+1] -> [B, L]
        logp = torch.log_softmax(self.logits, dim=-1)[tokens[:, :-1]]  # [B, L, V]
        return logp.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


def _accumulated_grad(policy, cfg, data, micro_batches):
    policy.zero_grad()
    chunks = [slice(i, i + len(data.tokens) // micro_batches) for i in range(0, len(data.tokens),
                                                                              len(data.tokens) // micro_batches)]
    totals = BatchTotals.of([data.mask[c] for c in chunks])
    for c in chunks:
        out = compute_loss(policy(data.tokens[c]), data.old[c], data.adv[c], data.mask[c], cfg, totals=totals,
                           ref_logprobs=data.ref[c], sampler_logprobs=data.sampler[c])
        out.loss.backward()
    return policy.logits.grad.clone()


def _ga_data(seed: int = 0) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 5, (8, L + 1), generator=g)
    mask = (torch.rand(8, L, generator=g) > 0.3).to(DTYPE)  # ragged: tool tokens and padding
    with torch.no_grad():
        base = TinyPolicy()(tokens)
    noise = lambda s: s * torch.randn(8, L, generator=g, dtype=DTYPE)  # noqa: E731
    return SimpleNamespace(tokens=tokens, mask=mask, adv=torch.randn(8, generator=g, dtype=DTYPE),
                           old=base + noise(0.3), ref=base + noise(0.3), sampler=base + noise(0.5))


@pytest.mark.parametrize("loss_type", sorted(set(LOSSES) - {"bnpo"}))
def test_gradient_accumulation_is_exact(loss_type):
    cfg = LossConfig(loss_type=loss_type, epsilon_high=CISPO_CAP if loss_type == "cispo" else 0.28, beta=0.05,
                     sampler_is_mode="token_truncate", sampler_is_clip_max=2.0, max_completion_length=L)
    data, policy = _ga_data(), TinyPolicy()
    full = _accumulated_grad(policy, cfg, data, micro_batches=1)
    assert full.abs().sum() > 0
    torch.testing.assert_close(_accumulated_grad(policy, cfg, data, micro_batches=8), full,
                               rtol=1e-10, atol=1e-13)


def test_bnpo_averages_local_token_means():
    """BNPO is defined by the local token count (TRL): 8 x 1 is the mean of per-sequence means."""
    data, policy = _ga_data(), TinyPolicy()
    bnpo = _accumulated_grad(policy, LossConfig(loss_type="bnpo", sampler_is_mode=None, beta=0.05), data, 8)
    grpo = _accumulated_grad(policy, LossConfig(loss_type="grpo", sampler_is_mode=None, beta=0.05), data, 1)
    torch.testing.assert_close(bnpo, grpo, rtol=1e-10, atol=1e-13)
    full_bnpo = _accumulated_grad(policy, LossConfig(loss_type="bnpo", sampler_is_mode=None, beta=0.05),
                                  data, 1)
    assert not torch.allclose(full_bnpo, bnpo)


# ---- masking --------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type", sorted(LOSSES))
def test_masked_tokens_never_enter_the_loss(loss_type):
    """Garbage (NaN, inf) on tool/pad tokens changes neither the loss, the metrics nor any gradient."""
    cfg = LossConfig(loss_type=loss_type, beta=0.04, sampler_is_mode="sequence_truncate",
                     sampler_is_clip_max=2.0, off_policy_mask_threshold=0.05)
    batch = make_batch(seed=4)
    masked = batch.mask == 0
    clean = ours(cfg, batch, batch.mask)
    for name, junk in [("logprobs", float("nan")), ("old", float("inf")), ("sampler", float("nan")),
                       ("ref", -float("inf"))]:
        dirty = SimpleNamespace(**vars(batch))
        setattr(dirty, name, getattr(batch, name).masked_fill(masked, junk))
        loss, grad, metrics = ours(cfg, dirty, batch.mask)
        assert torch.equal(loss, clean[0]), name
        assert torch.equal(grad, clean[1]), name
        assert metrics == clean[2], name
        assert torch.all(grad[masked] == 0)


def test_masked_tokens_do_not_count_in_sequence_ratio():
    """A sequence's GSPO ratio is the geometric mean over its trainable tokens only."""
    cfg = LossConfig(loss_type="gspo", sampler_is_mode=None)
    lp = torch.zeros(1, 4, dtype=DTYPE, requires_grad=True)
    old = torch.tensor([[-0.2, -0.2, -50.0, -50.0]], dtype=DTYPE)  # tool tokens with wild log-probs
    out = compute_loss(lp, old, torch.tensor([1.0], dtype=DTYPE), torch.tensor([[1, 1, 0, 0]]), cfg)
    assert out.metrics["ratio/mean"] == pytest.approx(math.exp(0.2))


def test_on_policy_ratio_is_one_and_gradient_is_policy_gradient():
    cfg = LossConfig(loss_type="dapo", sampler_is_mode=None)
    lp = torch.log(torch.tensor([[0.5, 0.25]], dtype=DTYPE)).requires_grad_(True)
    out = compute_loss(lp, None, torch.tensor([2.0], dtype=DTYPE), torch.ones(1, 2), cfg)
    out.loss.backward()
    assert out.metrics["ratio/mean"] == 1.0
    torch.testing.assert_close(lp.grad, torch.full((1, 2), -1.0, dtype=DTYPE))  # -A / num_tokens


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "bnpo"])
def test_half_precision_logprobs_count_tokens_exactly(loss_type):
    """bf16 cannot represent 257: counts and sums are taken in float32."""
    lp = torch.zeros(1, 257, dtype=torch.bfloat16, requires_grad=True)
    cfg = LossConfig(loss_type=loss_type, sampler_is_mode=None)
    out = compute_loss(lp, None, torch.ones(1), torch.ones(1, 257), cfg)
    assert out.loss.item() == -1.0


# ---- config ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [dict(loss_type="ppo"), dict(importance_sampling_level="turn"),
                                 dict(sampler_is_mode="sequence_clip"),
                                 dict(sampler_is_clip_min=None, sampler_is_clip_max=None),
                                 dict(sampler_is_clip_min=2.0, sampler_is_clip_max=1.0),
                                 dict(max_completion_length=0)])
def test_bad_config_is_a_config_error(bad):
    with pytest.raises(ConfigError):
        LossConfig(**bad)


def test_kl_needs_reference_logprobs():
    cfg = replace(LossConfig(), beta=0.1)
    with pytest.raises(ConfigError, match="ref_logprobs"):
        compute_loss(torch.zeros(1, 2), None, torch.zeros(1), torch.ones(1, 2), cfg)


def test_docstring_examples_run():
    result = doctest.testmod(losses_module)
    assert result.attempted > 0 and result.failed == 0
