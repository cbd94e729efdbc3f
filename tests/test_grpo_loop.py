"""GRPO loop pieces: dynamic sampling refills, advantages per group, masks of failed episodes."""

from __future__ import annotations

import random

import pytest
import torch

from toolgym.errors import ErrorRecord
from toolgym.rollouts.records import Trajectory, Turn
from toolgym.trainers.curriculum import UniformSampler
from toolgym.trainers.grpo import TrainerConfig, build_batch, collect, policy_update


def traj(task: str, i: int, reward: float, error: bool = False) -> Trajectory:
    return Trajectory(env_id="e", task_id=task, group_id=task, sample_index=i, token_ids=[1, 2, 3, 4],
                      loss_mask=[0, 1, 1, 0], logprobs=[0.0, -1.0, -1.0, 0.0], prompt_len=1, reward=reward,
                      turn_rewards=[reward], turns=[Turn(index=0, start=1, end=3, env_start=3, env_end=4)],
                      error=ErrorRecord("model", "ModelError", "x", True) if error else None)


class FakeWorker:
    """Group rewards alternate between all-equal and mixed, so dynamic sampling has to refill."""

    def __init__(self):
        self.calls = 0

    def run_sync(self, requests):
        self.calls += 1
        out = []
        for r in requests:
            task = r.group_id
            mixed = (int(task[1:]) + self.calls) % 2 == 0
            out += [traj(task, i, float(mixed and i % 2)) for i in range(r.group_size)]
        return out


def test_dynamic_sampling_keeps_only_informative_groups():
    cfg = TrainerConfig(tasks_per_step=4, group_size=4, dynamic_sampling=True, max_refills=5)
    worker = FakeWorker()
    groups, stats = collect(worker, cfg, UniformSampler(1000), random.Random(0))
    assert len(groups) == 4 and worker.calls > 1
    assert all(len({t.reward for t in g}) > 1 for g in groups)
    assert stats["groups_dropped"] > 0


def test_advantages_are_group_relative_and_failed_episodes_are_masked():
    cfg = TrainerConfig(group_size=4)
    groups = [[traj("t1", 0, 1.0), traj("t1", 1, 0.0), traj("t1", 2, 1.0), traj("t1", 3, 0.0, error=True)]]
    batch = build_batch(groups, cfg, pad_id=0)
    adv = batch.advantages[:, 1]  # one value per sequence
    assert adv[0] > 0 and adv[1] < 0 and adv[0] == pytest.approx(adv[2])
    assert adv[3] == 0 and batch.mask[3].sum() == 0  # the failed episode teaches nothing


def test_empty_step_is_skipped_not_crashed():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert build_batch([], TrainerConfig(), pad_id=0) is None
    assert policy_update(model, opt, None, TrainerConfig(), 1.0)["skipped"] == 1.0


def test_step_metrics_count_the_groups_that_carry_a_gradient():
    from toolgym.trainers.grpo import step_metrics

    groups = [[traj("t1", 0, 1.0), traj("t1", 1, 0.0)],  # mixed: informative
              [traj("t2", 0, 1.0), traj("t2", 1, 1.0)],  # all solved: zero advantage
              [traj("t3", 0, 0.0), traj("t3", 1, 1.0, error=True)]]  # the failure does not count
    m = step_metrics(groups, {}, {"generate_s": 1.0, "train_s": 1.0})
    assert m["informative_groups"] == pytest.approx(1 / 3)
