"""Advantage estimators (parity with TRL 1.16), per-turn credit, and DAPO batch shaping."""

from __future__ import annotations

import doctest
import inspect
import textwrap
from types import SimpleNamespace

import pytest
import torch
from trl.rewards import get_soft_overlong_punishment
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.rloo_trainer import RLOOTrainer
from trl.trainer.utils import nanstd as trl_nanstd

import toolgym.trainers.advantages as advantages_module
from toolgym.errors import ConfigError, ErrorRecord
from toolgym.rollouts.records import Trajectory, Turn
from toolgym.trainers.advantages import (
    ADVANTAGES,
    batch_normalize,
    compute_advantages,
    dynamic_sampling_filter,
    kl_penalized_rewards,
    leave_one_out,
    leave_one_out_defined,
    mask_truncated,
    nanstd,
    returns_to_go,
    soft_overlong_penalty,
    turn_level_advantages,
    whitened_leave_one_out,
)
from toolgym.trainers.grpo import TrainerConfig, token_advantages

NAN = float("nan")


def _block(method, start: str, end: str) -> str:
    """A statement block of a TRL method (through the ``end`` line), runnable with ``exec``."""
    source = inspect.getsource(method)
    i = source.rindex("\n", 0, source.index(start)) + 1  # from the start of the line, for dedent
    j = source.index(end, i) + len(end)
    return textwrap.dedent(source[i:j])


GRPO_BLOCK = _block(GRPOTrainer._generate_and_score_completions,
                    'if self.multi_objective_aggregation == "sum_then_normalize":',
                    "advantages = torch.nan_to_num(advantages, nan=0.0)")
RLOO_KL_BLOCK = _block(RLOOTrainer._generate_and_score_completions, "if self.beta != 0.0:\n            # RLOO",
                       "rewards = rewards - self.beta * kl")
RLOO_BLOCK = _block(RLOOTrainer._generate_and_score_completions, "grouped_rewards = rewards.view(-1, num_generations)",
                    "advantages = torch.nan_to_num(advantages, nan=0.0)")


def rewards_batch(seed: int, groups: int = 5, g: int = 4, with_nan: bool = True) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    r = torch.randint(0, 3, (groups, g), generator=gen).float() / 2  # ties and all-equal groups
    r[0] = 1.0  # a zero-variance group
    if with_nan:
        r[1, 2] = NAN  # an unscorable rollout
        r[2, :3] = NAN  # a group with a single scorable rollout
    return r


def trl_grpo_advantages(rewards: torch.Tensor, scale_rewards: str) -> torch.Tensor:
    flat = rewards.reshape(-1)
    scope = {
        "self": SimpleNamespace(multi_objective_aggregation="sum_then_normalize", scale_rewards=scale_rewards,
                                reward_weights=torch.ones(1)),
        "rewards_per_func": flat.unsqueeze(1), "unscorable_mask": torch.isnan(flat),
        "num_generations": rewards.shape[1], "device": "cpu", "torch": torch, "nanstd": trl_nanstd,
    }
    exec(GRPO_BLOCK, scope)
    return scope["advantages"].reshape(rewards.shape)


def trl_rloo_advantages(rewards: torch.Tensor, normalize: bool) -> torch.Tensor:
    scope = {"self": SimpleNamespace(normalize_advantages=normalize), "rewards": rewards.reshape(-1).clone(),
             "num_generations": rewards.shape[1], "torch": torch, "nanstd": trl_nanstd}
    exec(RLOO_BLOCK, scope)
    return scope["advantages"].reshape(rewards.shape)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("estimator", "scale_rewards"),
                         [("grpo", "group"), ("dr_grpo", "none"), ("grpo_batch_std", "batch")])
def test_group_estimators_match_trl(seed, estimator, scale_rewards):
    rewards = rewards_batch(seed)
    expected = trl_grpo_advantages(rewards, scale_rewards)
    torch.testing.assert_close(compute_advantages(rewards, estimator), expected)


@pytest.mark.parametrize("seed", range(4))
def test_leave_one_out_matches_trl_rloo(seed):
    rewards = rewards_batch(seed)
    torch.testing.assert_close(leave_one_out(rewards), trl_rloo_advantages(rewards, normalize=False))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("lone_rollout", [False, True])
def test_normalized_rloo_matches_trl(seed, lone_rollout):
    rewards = rewards_batch(seed)  # group 2 has a single scorable rollout
    if not lone_rollout:
        rewards[2] = torch.tensor([0.0, 1.0, NAN, 0.5])
    expected = trl_rloo_advantages(rewards, normalize=True)
    torch.testing.assert_close(whitened_leave_one_out(rewards), expected)
    torch.testing.assert_close(compute_advantages(rewards, "rloo_normalized"), expected)
    got = batch_normalize(leave_one_out(rewards), valid=leave_one_out_defined(rewards))
    torch.testing.assert_close(got, expected)


def test_whitening_leaves_a_lone_rollout_out_of_the_statistics():
    """Leave-one-out over one rollout is undefined: advantage 0, and no 0 enters the batch mean/std."""
    rewards = torch.tensor([[1.0, 0.0, 0.0], [5.0, NAN, NAN]])
    loo = leave_one_out(rewards[:1])  # the only defined advantages: [1, -0.5, -0.5]
    expected = torch.cat([(loo - loo.mean()) / (loo.std() + 1e-4), torch.zeros(1, 3)])
    torch.testing.assert_close(whitened_leave_one_out(rewards), expected)
    assert leave_one_out_defined(rewards).tolist() == [[True, True, True], [False, False, False]]


def test_kl_penalized_rewards_match_trl_rloo():
    gen = torch.Generator().manual_seed(0)
    old, ref = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    mask = (torch.rand(6, 5, generator=gen) > 0.3).long()
    rewards = torch.randn(6, generator=gen)
    scope = {"self": SimpleNamespace(beta=0.05), "rewards": rewards.clone(), "old_per_token_logps": old,
             "ref_per_token_logps": ref, "completion_mask": mask, "gather": lambda x: x}
    exec(RLOO_KL_BLOCK, scope)
    torch.testing.assert_close(kl_penalized_rewards(rewards, old, ref, mask, 0.05), scope["rewards"])


def test_nanstd_matches_trl():
    x = rewards_batch(1)
    torch.testing.assert_close(nanstd(x, dim=1), trl_nanstd(x, dim=1), equal_nan=True)
    torch.testing.assert_close(nanstd(x), trl_nanstd(x))


# ---- the trainer's call: every group of the step at once ---------------------------------------
def trajectories(rewards: torch.Tensor, turns: int = 1) -> list[list[Trajectory]]:
    """Groups of ``turns``-turn trajectories with the given outcome rewards (NaN: a failed episode)."""
    groups = []
    for i, row in enumerate(rewards.tolist()):
        group = []
        for j, r in enumerate(row):
            spans = [Turn(index=k, start=1 + 3 * k, end=3 + 3 * k, env_start=3 + 3 * k, env_end=4 + 3 * k)
                     for k in range(turns)]
            mask = [0] + [1, 1, 0] * turns
            failed = r != r
            group.append(Trajectory(env_id="e", task_id=f"t{i}", group_id=f"t{i}", sample_index=j,
                                    token_ids=list(range(len(mask))), loss_mask=mask, logprobs=[0.0] * len(mask),
                                    prompt_len=1, reward=0.0 if failed else r,
                                    turn_rewards=[0.0] * (turns - 1) + [0.0 if failed else r], turns=spans,
                                    error=ErrorRecord("model", "ModelError", "x") if failed else None))
        groups.append(group)
    return groups


@pytest.mark.parametrize("per_turn", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_trainer_batch_std_spans_every_group_of_the_step(seed, per_turn):
    """``grpo_batch_std`` in the trainer: group-centred rewards / std of the whole step's rewards (TRL "batch")."""
    rewards = rewards_batch(seed, groups=5, g=4)
    adv = token_advantages(trajectories(rewards), TrainerConfig(advantage="grpo_batch_std", per_turn=per_turn))
    got = torch.tensor([a[1] for a in adv]).reshape(rewards.shape)  # token 1: the first sampled token
    torch.testing.assert_close(got, trl_grpo_advantages(rewards, scale_rewards="batch"))


@pytest.mark.parametrize("per_turn", [False, True])
def test_trainer_whitening_spans_every_group_of_the_step(per_turn):
    rewards = rewards_batch(2, groups=5, g=4)
    adv = token_advantages(trajectories(rewards), TrainerConfig(advantage="rloo_normalized", per_turn=per_turn))
    got = torch.tensor([a[1] for a in adv]).reshape(rewards.shape)
    torch.testing.assert_close(got, trl_rloo_advantages(rewards, normalize=True))


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("per_turn", [False, True])
def test_unequal_group_sizes_give_each_group_its_own_advantages(estimator, per_turn):
    """Short groups are padded with NaN: a group-wise estimator gives what it gives the group alone."""
    rewards = rewards_batch(4, groups=3, g=4)
    groups = trajectories(rewards, turns=2)
    groups[1] = groups[1][:2]
    cfg = TrainerConfig(advantage=estimator, per_turn=per_turn)
    together = [x for a in token_advantages(groups, cfg) for x in a]
    alone = [x for g in groups for a in token_advantages([g], cfg) for x in a]
    assert together == pytest.approx(alone, abs=1e-6)


def test_unscorable_rollouts_get_zero_and_do_not_shift_the_baseline():
    rewards = torch.tensor([[1.0, 0.0, NAN]])
    for name, estimator in ADVANTAGES.items():
        adv = estimator(rewards)
        assert adv[0, 2] == 0, name
        torch.testing.assert_close(adv[:, :2], estimator(rewards[:, :2]), msg=name)


def test_unknown_estimator_and_bad_shape():
    with pytest.raises(ConfigError):
        compute_advantages(torch.zeros(2, 2), "ppo")
    with pytest.raises(ValueError):
        compute_advantages(torch.zeros(4), "grpo")


# ---- per-turn rewards -----------------------------------------------------------------------
def test_returns_to_go_is_the_discounted_sum():
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(3, 4, 5, generator=gen)
    gamma = 0.9
    got = returns_to_go(r, gamma)
    for t in range(5):
        expected = sum(gamma ** (k - t) * r[..., k] for k in range(t, 5))
        torch.testing.assert_close(got[..., t], expected)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])  # the group-wise estimators
def test_outcome_only_rewards_reduce_to_sequence_advantages(estimator):
    """Equal-length episodes, reward only on the last turn, gamma=1: every turn gets the episode's advantage."""
    n, g, t, length = 3, 4, 3, 9
    outcome = rewards_batch(7, n, g, with_nan=False)
    turn_rewards = torch.zeros(n, g, t)
    turn_rewards[..., -1] = outcome
    token_turns = torch.tensor([-1, 0, 0, -1, 1, 1, -1, 2, 2]).repeat(n * g, 1)  # [N*G, L]: -1 = tool output
    adv = turn_level_advantages(turn_rewards, token_turns, gamma=1.0, estimator=estimator)
    expected = compute_advantages(outcome, estimator).reshape(n * g, 1).expand(n * g, length)
    torch.testing.assert_close(adv, expected.masked_fill(token_turns < 0, 0.0))


def test_turn_baseline_only_compares_rollouts_that_reached_the_turn():
    # Group of 3: rollout 0 has 3 turns, rollout 1 has 2, rollout 2 has 1.
    turn_rewards = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 1.0, NAN], [0.0, NAN, NAN]]])
    token_turns = torch.tensor([[0, 1, 2], [0, 1, -1], [0, -1, -1]])
    adv = turn_level_advantages(turn_rewards, token_turns, gamma=0.5, estimator="dr_grpo")
    r0 = returns_to_go(turn_rewards, 0.5)[0, :, 0]  # turn 0: all three compare
    torch.testing.assert_close(adv[:, 0], r0 - r0.mean())
    # Turn 1: rollouts 0 and 1 compare returns 0.5 and 1.0; turn 2: only rollout 0 -> nothing to compare.
    torch.testing.assert_close(adv[:2, 1], torch.tensor([-0.25, 0.25]))
    assert adv[0, 2] == 0
    assert torch.all(adv[token_turns < 0] == 0)


# ---- DAPO -----------------------------------------------------------------------------------
def test_dynamic_sampling_filter_keeps_groups_with_signal():
    rewards = rewards_batch(3)
    keep = dynamic_sampling_filter(rewards)
    for i, row in enumerate(rewards):
        scorable = row[~torch.isnan(row)]
        assert bool(keep[i]) == (len(scorable) >= 2 and len(set(scorable.tolist())) > 1)
    # A kept group always has a non-zero GRPO advantage; a dropped one never does.
    adv = compute_advantages(rewards, "grpo")
    assert torch.equal(adv.abs().sum(1) > 0, keep)


def test_mask_truncated_drops_whole_rollouts():
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    got = mask_truncated(mask, torch.tensor([True, False]))
    assert got.tolist() == [[0, 0, 0], [1, 0, 1]]


@pytest.mark.parametrize(("max_length", "cache"), [(100, 20), (16, 0), (10, 10)])
def test_soft_overlong_penalty_matches_trl(max_length, cache):
    lengths = torch.arange(0, max_length + 15)
    expected = get_soft_overlong_punishment(max_length, cache)([[0] * n for n in lengths.tolist()])
    torch.testing.assert_close(soft_overlong_penalty(lengths, max_length, cache), torch.tensor(expected))


def test_docstring_examples_run():
    result = doctest.testmod(advantages_module)
    assert result.attempted > 0 and result.failed == 0
