"""The pass-rate curriculum: tasks the policy solves sometimes are drawn most, and it drives collect()."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from toolgym.envs.task import ListTasks, Task
from toolgym.errors import ConfigError
from toolgym.rollouts.records import Trajectory
from toolgym.trainers.curriculum import CurriculumConfig, PassRateSampler, UniformSampler, make_sampler
from toolgym.trainers.grpo import TrainerConfig, collect

PASS_RATE = CurriculumConfig(kind="pass_rate", ema=1.0)


def test_tasks_solved_sometimes_are_preferred_to_solved_or_hopeless_ones():
    s = PassRateSampler(30, PASS_RATE)
    for i in range(30):  # 10 always solved, 10 never, 10 half the time
        s.update(i, [1.0] * 4 if i < 10 else [0.0] * 4 if i < 20 else [1.0, 0.0, 1.0, 0.0])
    counts = Counter(i for seed in range(300) for i in s.sample(5, random.Random(seed)))
    middle = sum(counts[i] for i in range(20, 30))
    assert middle > 0.8 * sum(counts.values())
    assert sum(counts[i] for i in range(20)) > 0  # the floor keeps the others in play


def test_samples_are_distinct_and_seeded():
    s = PassRateSampler(8, PASS_RATE)
    picks = s.sample(8, random.Random(3))
    assert sorted(picks) == list(range(8)) and picks == s.sample(8, random.Random(3))
    assert s.sample(20, random.Random(0)) and len(s.sample(20, random.Random(0))) == 8


def test_pass_rate_is_a_running_average_and_failed_episodes_do_not_count():
    s = PassRateSampler(2, CurriculumConfig(kind="pass_rate", ema=0.5))
    s.update(0, [1.0, 1.0])
    s.update(0, [0.0, 0.0, float("nan")])
    assert s.rates["0"] == pytest.approx(0.5) and s.seen["0"] == 4
    s.update(1, [float("nan")])
    assert "1" not in s.rates


def test_state_round_trips_through_json():
    s = PassRateSampler(5, PASS_RATE)
    s.update(2, [1.0, 0.0])
    t = PassRateSampler(5, PASS_RATE)
    t.load_state_dict(json.loads(json.dumps(s.state_dict())))
    assert t.weights() == s.weights() and t.sample(3, random.Random(1)) == s.sample(3, random.Random(1))


def test_tasks_can_share_a_pass_rate_by_metadata_key():
    tasks = ListTasks([Task(id=str(i), prompt="p", answer="a", metadata={"level": i % 2}) for i in range(6)])
    s = make_sampler(CurriculumConfig(kind="pass_rate", ema=1.0, key="level"), tasks)
    s.update(0, [1.0, 1.0])  # level 0 mastered: every even task drops to the floor
    w = s.weights()
    assert w[0] == w[2] == w[4] == pytest.approx(0.05) and w[1] == w[3] == w[5] == pytest.approx(1.05)


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown curriculum kind"):
        make_sampler(CurriculumConfig(kind="hardest"), ListTasks([Task(id="0", prompt="p", answer="a")]))


class SolvesLowIndices:
    """A policy that always solves tasks 0-3, never 4-7, and half of 8-11."""

    def __init__(self):
        self.asked: list[int] = []

    def run_sync(self, requests):
        out = []
        for r in requests:
            i = r.task["task_index"]
            self.asked.append(i)
            for k in range(r.group_size):
                reward = 1.0 if i < 4 else 0.0 if i < 8 else float(k % 2)
                out.append(Trajectory(env_id="e", task_id=f"x{i}", group_id=r.group_id, sample_index=k, reward=reward))
        return out


def test_collect_feeds_the_curriculum_and_it_moves_towards_informative_tasks():
    cfg = TrainerConfig(tasks_per_step=3, group_size=4)
    worker, sampler, rng = SolvesLowIndices(), PassRateSampler(12, PASS_RATE), random.Random(0)
    for _ in range(40):
        collect(worker, cfg, sampler, rng)
    assert set(sampler.rates) == {str(i) for i in range(12)}  # every task got tried
    late = Counter(worker.asked[-60:])
    assert sum(late[i] for i in range(8, 12)) > 0.6 * 60
    uniform = SolvesLowIndices()
    for _ in range(40):
        collect(uniform, cfg, UniformSampler(12), rng)
    assert sum(Counter(uniform.asked[-60:])[i] for i in range(8, 12)) < 0.6 * 60
