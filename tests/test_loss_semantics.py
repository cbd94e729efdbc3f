"""What the losses mean in the trainer: CISPO's cap, RLOO's KL in the reward, per-sequence metrics,
and the normalisers under data parallelism (the points an audit against TRL 1.16 raised)."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from trl.trainer.rloo_trainer import RLOOTrainer
from trl.trainer.utils import nanstd as trl_nanstd

from toolgym.errors import ConfigError, ErrorRecord
from toolgym.rollouts.records import Trajectory, Turn
from toolgym.trainers.grpo import TrainerConfig, build_batch
from toolgym.trainers.losses import (
    CISPO_DEFAULT_CAP,
    LOSSES,
    BatchTotals,
    LossConfig,
    compute_loss,
    kl_in_reward,
    sequence_mean,
)

DTYPE = torch.float64
NAN = float("nan")


# ---- CISPO's cap ------------------------------------------------------------------------------
def test_cispo_defaults_to_a_paper_sized_cap():
    assert LossConfig(loss_type="cispo").eps_high == CISPO_DEFAULT_CAP == 5.0
    assert LossConfig(loss_type="dapo").eps_high == 0.2  # clip-higher still defaults to epsilon_low


def test_cispo_weights_are_the_ratio_capped_at_five():
    """On-policy tokens keep weight 1 (REINFORCE); only ratios above the cap are truncated."""
    ratios = torch.tensor([[1.0, 3.0, 7.0]], dtype=DTYPE)
    lp = torch.zeros(1, 3, dtype=DTYPE, requires_grad=True)
    out = compute_loss(lp, -torch.log(ratios), torch.tensor([1.0], dtype=DTYPE), torch.ones(1, 3),
                       LossConfig(loss_type="cispo", sampler_is_mode=None))
    out.loss.backward()
    torch.testing.assert_close(lp.grad, -torch.tensor([[1.0, 3.0, 5.0]], dtype=DTYPE) / 3)  # -w * A / tokens
    assert out.metrics["cispo_clip_ratio"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("cap", [0.2, 0.28, 0.99])
def test_cispo_rejects_a_cap_below_one(cap):
    with pytest.raises(ConfigError, match="epsilon_high"):
        LossConfig(loss_type="cispo", epsilon_high=cap)
    assert LossConfig(loss_type="cispo", epsilon_high=4.0).eps_high == 4.0
    assert LossConfig(loss_type="dapo", epsilon_high=cap).eps_high == cap  # clip ranges stay small


# ---- RLOO: the KL goes in the reward (TRL RLOOTrainer) ---------------------------------------
def _block(method, start: str, end: str) -> str:
    """A statement block of a TRL method (through the ``end`` line), runnable with ``exec``."""
    source = inspect.getsource(method)
    i = source.rindex("\n", 0, source.index(start)) + 1
    return textwrap.dedent(source[i: source.index(end, i) + len(end)])


RLOO_SCORE = RLOOTrainer._generate_and_score_completions
RLOO_KL_BLOCK = _block(RLOO_SCORE, "if self.beta != 0.0:\n            # RLOO", "rewards = rewards - self.beta * kl")
RLOO_BLOCK = _block(RLOO_SCORE, "grouped_rewards = rewards.view(-1, num_generations)",
                    "advantages = torch.nan_to_num(advantages, nan=0.0)")


def trl_rloo_advantages(rewards, old, ref, mask, beta: float, g: int, normalize: bool) -> torch.Tensor:
    """TRL's own code: KL penalty on the rewards, then leave-one-out (and whitening)."""
    scope = {"self": SimpleNamespace(beta=beta, normalize_advantages=normalize), "rewards": rewards.clone(),
             "old_per_token_logps": old, "ref_per_token_logps": ref, "completion_mask": mask,
             "gather": lambda x: x, "num_generations": g, "torch": torch, "nanstd": trl_nanstd}
    exec(RLOO_KL_BLOCK, scope)
    exec(RLOO_BLOCK, scope)
    return scope["advantages"]


class Bigram(torch.nn.Module):
    """A policy whose logits depend on the previous token only; scored through the full-forward path."""

    def __init__(self, seed: int, vocab: int = 8) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])  # [B, L, V]

    def logprobs(self, ids: torch.Tensor) -> torch.Tensor:  # [B, L], 0 at position 0
        lp = torch.log_softmax(self.table, -1)[ids[:, :-1], ids[:, 1:]]
        return torch.nn.functional.pad(lp, (1, 0)).detach()


def rollouts(groups: int = 3, g: int = 4, turns: int = 1) -> list[list[Trajectory]]:
    """Groups of multi-turn episodes of different lengths, with tool tokens and one failed episode."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(groups):
        group = []
        for j in range(g):
            ids, mask, spans = [1], [0], []
            for k in range(turns):
                n = 1 + int(torch.randint(1, 4, (1,), generator=gen))
                spans.append(Turn(index=k, start=len(ids), end=len(ids) + n, env_start=len(ids) + n,
                                  env_end=len(ids) + n + 1))
                ids += torch.randint(0, 8, (n + 1,), generator=gen).tolist()
                mask += [1] * n + [0]  # the sampled turn, then one tool token
            failed = (i, j) == (1, 2)
            reward = float(torch.randint(0, 3, (1,), generator=gen)) / 2
            group.append(Trajectory(env_id="e", task_id=f"t{i}", group_id=f"t{i}", sample_index=j, token_ids=ids,
                                    loss_mask=mask, logprobs=[0.0] * len(ids), prompt_len=1, reward=reward,
                                    turn_rewards=[0.0] * (turns - 1) + [reward], turns=spans,
                                    error=ErrorRecord("model", "ModelError", "x") if failed else None))
        out.append(group)
    return out


@pytest.mark.parametrize("advantage", ["rloo", "rloo_normalized"])
def test_rloo_kl_is_a_reward_penalty_before_leave_one_out(advantage):
    policy, ref = Bigram(1), Bigram(2)
    groups = rollouts()
    cfg = TrainerConfig(advantage=advantage, loss=LossConfig(loss_type="rloo", beta=0.3))
    batch = build_batch(groups, cfg, pad_id=0, model=policy, ref_model=ref)
    rewards = torch.tensor([NAN if t.error else t.reward for g in groups for t in g])  # [B]
    expected = trl_rloo_advantages(rewards, policy.logprobs(batch.ids), ref.logprobs(batch.ids), batch.mask,
                                   beta=0.3, g=4, normalize=advantage == "rloo_normalized")
    torch.testing.assert_close(batch.advantages[:, 1], expected)  # position 1: a sampled token
    assert not torch.allclose(expected, trl_rloo_advantages(rewards, policy.logprobs(batch.ids),
                                                            ref.logprobs(batch.ids), batch.mask, beta=0.0, g=4,
                                                            normalize=advantage == "rloo_normalized"))


def test_per_turn_rloo_kl_charges_each_turn_its_own_tokens():
    """With gamma 1 a turn's return holds the KL of it and every later turn: turn 0 pays the episode's."""
    policy, ref = Bigram(1), Bigram(2)
    groups = rollouts(turns=2)
    loss = LossConfig(loss_type="rloo", beta=0.3)
    per_turn = build_batch(groups, TrainerConfig(advantage="rloo", per_turn=True, loss=loss), 0,
                           model=policy, ref_model=ref)
    whole = build_batch(groups, TrainerConfig(advantage="rloo", loss=loss), 0, model=policy, ref_model=ref)
    torch.testing.assert_close(per_turn.advantages[:, 1], whole.advantages[:, 1])  # turn 0 starts at 1
    assert not torch.allclose(per_turn.advantages * per_turn.mask, whole.advantages * whole.mask)


def test_reward_kl_needs_the_policy_and_the_reference():
    cfg = TrainerConfig(loss=LossConfig(loss_type="rloo", beta=0.1))
    with pytest.raises(ConfigError, match="ref_model"):
        build_batch(rollouts(), cfg, pad_id=0)
    assert kl_in_reward(cfg.loss) and not kl_in_reward(LossConfig(loss_type="rloo"))
    assert build_batch(rollouts(), TrainerConfig(loss=LossConfig(loss_type="rloo_k3", beta=0.1)), 0) is not None


def _batch(seed: int, b: int = 5, length: int = 6) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(b, length, generator=g, dtype=DTYPE) * 2
    lengths = torch.tensor([6, 2, 4, 1, 5])[:b]
    mask = (torch.arange(length) < lengths.unsqueeze(1)).to(DTYPE)  # [B, L] sequences of different lengths
    return SimpleNamespace(lp=lp, old=lp + 0.2 * torch.randn(b, length, generator=g, dtype=DTYPE),
                           ref=lp + 0.3 * torch.randn(b, length, generator=g, dtype=DTYPE),
                           adv=torch.randn(b, generator=g, dtype=DTYPE), mask=mask)


def _loss(loss_type: str, data: SimpleNamespace, advantages: torch.Tensor, **options):
    lp = data.lp.clone().requires_grad_(True)
    cfg = LossConfig(loss_type=loss_type, sampler_is_mode=None, **options)
    out = compute_loss(lp, data.old, advantages, data.mask, cfg, ref_logprobs=data.ref)
    out.loss.backward()
    return out, lp.grad


def test_rloo_loss_has_no_kl_term_and_rloo_k3_keeps_the_old_one():
    data = _batch(0)
    plain, plain_grad = _loss("rloo", data, data.adv)
    with_beta, beta_grad = _loss("rloo", data, data.adv, beta=0.2)  # the KL is already in the advantages
    torch.testing.assert_close(with_beta.loss, plain.loss)
    torch.testing.assert_close(beta_grad, plain_grad)
    k3, _ = _loss("rloo_k3", data, data.adv, beta=0.2)
    ratio = torch.exp(((data.lp - data.old) * data.mask).sum(-1, keepdim=True))  # [B, 1] sequence ratio
    kl = (torch.exp(data.ref - data.lp) - (data.ref - data.lp) - 1) * ratio  # [B, L] k3, bias-corrected
    per_seq = (kl * data.mask).sum(-1) / data.mask.sum(-1)  # [B]
    torch.testing.assert_close(k3.loss - plain.loss, 0.2 * per_seq.mean())
    assert k3.metrics["kl"] > 0 and "kl" not in with_beta.metrics


# ---- sequence-level metrics count sequences ----------------------------------------------------
SEQUENCE_LEVEL = [("gspo", {}), ("luspo", {}), ("rloo", {}), ("vespo", {}),
                  ("cispo", {"importance_sampling_level": "sequence", "epsilon_high": 1.05}),
                  ("dapo", {"importance_sampling_level": "sequence"})]


@pytest.mark.parametrize(("loss_type", "options"), SEQUENCE_LEVEL)
def test_sequence_metrics_do_not_depend_on_the_advantage_layout(loss_type, options):
    """The trainer passes [B, L] advantages (one value per sequence); metrics must equal the [B] ones (TRL's)."""
    data = _batch(3)
    options = {"epsilon_low": 0.05, "epsilon_high": 0.05, **options} if loss_type != "vespo" else options
    per_seq, grad_seq = _loss(loss_type, data, data.adv, **options)
    per_tok, grad_tok = _loss(loss_type, data, data.adv.unsqueeze(1).expand_as(data.mask).clone(), **options)
    torch.testing.assert_close(grad_tok, grad_seq)
    assert per_tok.metrics == pytest.approx(per_seq.metrics, rel=1e-12, abs=1e-12)


def test_clip_ratio_counts_each_sequence_once():
    """A long clipped sequence and a short unclipped one: half the sequences clipped, not 5/6 of the tokens."""
    lp = torch.zeros(2, 5, dtype=DTYPE, requires_grad=True)
    old = torch.tensor([[-1.0] * 5, [0.0] * 5], dtype=DTYPE)  # sequence 0's ratio e > 1 + eps
    mask = torch.tensor([[1.0] * 5, [1.0, 0, 0, 0, 0]], dtype=DTYPE)
    adv = torch.ones(2, 5, dtype=DTYPE)
    out = compute_loss(lp, old, adv, mask, LossConfig(loss_type="gspo", sampler_is_mode=None))
    assert out.metrics["clip_ratio/high_mean"] == pytest.approx(0.5)
    assert out.metrics["ratio/mean"] == pytest.approx((math.e + 1) / 2)
    assert float(sequence_mean(adv, torch.zeros_like(mask))) == 0.0  # no trainable token: nothing to average


# ---- data parallelism --------------------------------------------------------------------------
class TinyPolicy(torch.nn.Module):
    """Bigram log-probs of a token sequence: ``[B, L+1]`` tokens -> ``[B, L]``."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=DTYPE))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(self.logits, dim=-1)[tokens[:, :-1]]  # [B, L, V]
        return logp.gather(-1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


def _dp_data(seed: int = 0, b: int = 8, length: int = 7) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 5, (b, length + 1), generator=g)
    lengths = torch.tensor([7, 1, 2, 6, 7, 7, 5, 3])
    mask = (torch.arange(length) < lengths.unsqueeze(1)).to(DTYPE)  # ranks hold very different token counts
    with torch.no_grad():
        base = TinyPolicy()(tokens)
    noise = lambda s: s * torch.randn(b, length, generator=g, dtype=DTYPE)  # noqa: E731
    return SimpleNamespace(tokens=tokens, mask=mask, adv=torch.randn(b, generator=g, dtype=DTYPE),
                           old=base + noise(0.3), ref=base + noise(0.3))


def _grad(cfg: LossConfig, data: SimpleNamespace, rows: list[slice], totals: BatchTotals) -> torch.Tensor:
    """Gradient of one rank that accumulates over the micro-batches ``rows``."""
    policy = TinyPolicy()
    for r in rows:
        out = compute_loss(policy(data.tokens[r]), data.old[r], data.adv[r], data.mask[r], cfg, totals=totals,
                           ref_logprobs=data.ref[r])
        out.loss.backward()
    return policy.logits.grad


RANKS = [[slice(0, 3)], [slice(3, 5), slice(5, 8)]]  # rank 1 accumulates two micro-batches


def _data_parallel_grad(cfg: LossConfig, data: SimpleNamespace, global_totals: bool) -> torch.Tensor:
    local = [BatchTotals.of([data.mask[r] for r in rows]) for rows in RANKS]
    tokens, sequences = sum(t.num_tokens for t in local), sum(t.num_sequences for t in local)
    totals = [t.data_parallel(tokens, sequences, len(RANKS)) if global_totals else t for t in local]
    return sum(_grad(cfg, data, rows, t) for rows, t in zip(RANKS, totals, strict=True)) / len(RANKS)  # DDP mean


@pytest.mark.parametrize("loss_type", sorted(set(LOSSES) - {"bnpo"}))
def test_all_reduced_totals_give_the_single_process_gradient(loss_type):
    cfg = LossConfig(loss_type=loss_type, beta=0.05, sampler_is_mode=None, max_completion_length=7)
    data = _dp_data()
    single = _grad(cfg, data, [slice(0, 8)], BatchTotals.of([data.mask]))
    torch.testing.assert_close(_data_parallel_grad(cfg, data, global_totals=True), single, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("loss_type", ["dapo", "cispo", "vespo"])
def test_local_totals_are_wrong_for_token_means(loss_type):
    """The old advice (this rank's own totals) averages per-rank token means: not the global token mean."""
    cfg = LossConfig(loss_type=loss_type, sampler_is_mode=None)
    data = _dp_data()
    single = _grad(cfg, data, [slice(0, 8)], BatchTotals.of([data.mask]))
    assert not torch.allclose(_data_parallel_grad(cfg, data, global_totals=False), single)


def test_all_reduce_without_a_process_group_is_the_identity():
    totals = BatchTotals(num_tokens=7.0, num_sequences=3.0, num_micro_batches=2)
    assert not dist.is_initialized() and totals.all_reduce() is totals


RANK_SCRIPT = """
import sys, torch.distributed as dist
from toolgym.trainers.losses import BatchTotals
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
print(BatchTotals(num_tokens=[3.0, 11.0][rank], num_sequences=[1.0, 3.0][rank], num_micro_batches=rank + 1).all_reduce())
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_all_reduce_sums_over_ranks_and_divides_by_the_world(tmp_path):
    """Two gloo ranks with 3 and 11 tokens: each divides by (3 + 11) / 2; micro-batch counts stay local."""
    store = str(tmp_path / "store")
    ranks = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(r), store], stdout=subprocess.PIPE, text=True)
             for r in range(2)]
    outputs = [proc.communicate(timeout=300)[0].strip() for proc in ranks]
    assert [proc.returncode for proc in ranks] == [0, 0]
    assert outputs == [repr(BatchTotals(7.0, 2.0, 1)), repr(BatchTotals(7.0, 2.0, 2))]
