"""``toolgym eval``: runs the tiny model, writes trajectories and a summary, resumes."""

from __future__ import annotations

import argparse
import json

import pytest

from toolgym.rollouts.eval import add_eval_parser, pass_at_k, summarize
from toolgym.rollouts.records import Trajectory, read_trajectories


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_eval_runs_and_resumes(tmp_path, capsys):
    out = tmp_path / "eval.jsonl"
    argv = ["eval", "toolgym/Arithmetic-v0", "--model", "tiny", "--engine", "hf", "--episodes", "2", "--group", "2",
            "--out", str(out), "--max-new-tokens", "6", "--no-progress", "--device", "cpu"]
    args = _parse(argv)
    assert args.func(args) == 0
    first = read_trajectories(out)
    assert sorted(t.key for t in first) == [("arith-eval-0", 0), ("arith-eval-0", 1), ("arith-eval-1", 0),
                                          ("arith-eval-1", 1)]
    assert all(t.cost.completion_tokens <= 6 * 4 for t in first)
    summary = json.loads((tmp_path / "eval.jsonl.summary.json").read_text())
    assert summary["episodes"] == 4 and summary["new_episodes"] == 4 and set(summary["pass_at_k"]) == {"1", "2"}
    assert "mean reward" in capsys.readouterr().out
    # same --out, one more task: only the new task's episodes run
    args = _parse(argv[:7] + ["3"] + argv[8:])
    assert args.func(args) == 0
    second = read_trajectories(out)
    assert len(second) == 6 and [t.to_dict() for t in second[:4]] == [t.to_dict() for t in first]
    summary = json.loads((tmp_path / "eval.jsonl.summary.json").read_text())
    assert summary["new_episodes"] == 2 and summary["episodes"] == 6


def test_pass_at_k_and_summary_counts():
    assert pass_at_k(5, 5, 3) == 1.0
    assert pass_at_k(3, 1, 2) == pytest.approx(1 - 1 / 3)
    ts = [Trajectory(env_id="e", task_id="a", sample_index=0, reward=1.0),
          Trajectory(env_id="e", task_id="a", sample_index=1, reward=0.0),
          Trajectory(env_id="e", task_id="b", sample_index=0, reward=0.0, truncated=True, truncated_reason="max_turns"),
          Trajectory(env_id="e", task_id="b", sample_index=1, reward=0.0)]
    s = summarize(ts, threshold=1.0)
    assert s.pass_at_k == {1: 0.25, 2: 0.5} and s.mean_reward == 0.25 and s.truncated == {"max_turns": 1}
