"""GRPO loop pieces: dynamic sampling refills, advantages per group, masks of failed episodes."""

from __future__ import annotations

import copy
import os
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


def _tiny_policy():
    from transformers import AutoModelForCausalLM

    from toolgym.rollouts.tiny import tiny_model_path

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path())
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _zero_advantage_batch(advantage: float = 0.0):
    from toolgym.trainers.batch import pad_batch

    # the prompt token carries a non-zero advantage: only trainable tokens count
    return pad_batch([[1, 2, 3, 4], [1, 5, 6]], [[0, 1, 1, 0], [0, 1, 1]], [[0.0, -1.0, -2.0, 0.0], [0.0, -0.5, -0.5]],
                     [[7.0, advantage, advantage, 0.0], [7.0, advantage, advantage]])


def test_zero_advantage_batch_skips_backward_and_optimizer_step():
    model, opt = _tiny_policy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    model.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    out = policy_update(model, opt, _zero_advantage_batch(), TrainerConfig(), 1.0)
    hook.remove()
    assert out["skipped"] == 1.0 and out["skipped_zero_advantage"] == 1.0 and out["grad_norm"] == 0.0
    assert out["neg_logprob"] == pytest.approx(1.0)  # from the sampler's log-probs: no forward ran
    assert not calls and not opt.state  # no forward, no AdamW step (its moments stay empty)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_nonzero_advantage_or_kl_still_trains():
    from toolgym.trainers.losses import LossConfig

    model, opt = _tiny_policy()
    out = policy_update(model, opt, _zero_advantage_batch(advantage=1.0), TrainerConfig(), 1.0)
    assert out["skipped_zero_advantage"] == 0.0 and "skipped" not in out and out["grad_norm"] > 0 and opt.state
    # beta > 0: the KL term has a gradient even with zero advantages, so the step runs
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    cfg = TrainerConfig(loss=LossConfig(beta=0.1))
    out = policy_update(model, opt, _zero_advantage_batch(), cfg, 1.0, ref_model=ref)
    assert out["skipped_zero_advantage"] == 0.0 and out["grad_norm"] > 0 and out["kl"] > 0


def test_chunked_update_matches_the_full_logits_update():
    results = []
    for chunk in (0, 3):
        model, _ = _tiny_policy()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)  # AdamW's first step is lr*sign(g): too sensitive
        out = policy_update(model, opt, _zero_advantage_batch(advantage=1.0),
                            TrainerConfig(logprob_chunk_tokens=chunk, micro_batch_size=1), 0.7)
        results.append((out, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (full, w_full), (chunked, w_chunked) = results
    assert chunked["loss"] == pytest.approx(full["loss"], abs=1e-6)
    assert chunked["grad_norm"] == pytest.approx(full["grad_norm"], rel=1e-4)
    assert torch.allclose(w_full, w_chunked, atol=1e-6)


def test_configure_cpu_threads_never_exceeds_the_cores():
    from toolgym.trainers.grpo import available_cpu_cores, configure_cpu_threads

    saved = torch.get_num_threads()
    try:
        cores = available_cpu_cores()
        assert 1 <= cores <= len(os.sched_getaffinity(0))
        assert configure_cpu_threads(None) == cores == torch.get_num_threads()
        assert configure_cpu_threads(10_000) == cores
        assert configure_cpu_threads(1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(saved)
