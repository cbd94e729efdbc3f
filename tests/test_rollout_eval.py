"""``toolgym eval``: runs the tiny model, writes trajectories and a summary, resumes."""

from __future__ import annotations

import argparse
import json

import pytest

from toolgym.errors import ConfigError
from toolgym.rollouts.eval import add_eval_parser, resolve_args, summarize
from toolgym.rollouts.metrics import pass_at_k
from toolgym.rollouts.records import DriftEvent, Trajectory, read_trajectories


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_eval_runs_and_resumes(tmp_path, capsys):
    out = tmp_path / "eval.jsonl"
    argv = ["eval", "toolgym/Arithmetic-v0", "--model", "tiny", "--engine", "hf", "--episodes", "2", "--group", "2",
            "--out", str(out), "--max-new-tokens", "6", "--no-progress", "--device", "cpu", "--drift-check", "tokens"]
    args = _parse(argv)
    assert args.func(args) == 0
    first = read_trajectories(out)
    assert sorted(t.key for t in first) == [("arith-eval-0", 0), ("arith-eval-0", 1), ("arith-eval-1", 0),
                                          ("arith-eval-1", 1)]
    assert all(t.cost.completion_tokens <= 6 * 4 for t in first)
    summary = json.loads((tmp_path / "eval.jsonl.summary.json").read_text())
    assert summary["episodes"] == 4 and summary["new_episodes"] == 4 and set(summary["pass_at_k"]) == {"1", "2"}
    assert summary["temperature"] == 0.0 and summary["temperatures"] == {"0.0": 4}  # greedy unless told
    assert summary["drift_check"] == "tokens" and isinstance(summary["drift"], dict)
    printed = capsys.readouterr().out
    assert "mean reward" in printed and "0 (greedy)" in printed and "drift events" in printed
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


def test_defaults_greedy_and_drift_check_choices():
    args = _parse(["eval", "toolgym/Arithmetic-v0", "--model", "tiny", "--out", "x.jsonl"])
    assert resolve_args(args) == {}
    assert args.temperature == 0.0 and args.drift_check == "text" and args.max_new_tokens == 256
    assert _parse(["eval", "e", "--model", "m", "--out", "o", "--drift-check", "off"]).drift_check == "off"
    with pytest.raises(SystemExit):
        _parse(["eval", "e", "--model", "m", "--out", "o", "--drift-check", "sometimes"])


def test_drift_check_reaches_the_rollout_config(monkeypatch, tmp_path):
    import toolgym.rollouts.eval as ev

    seen = {}

    class Worker:
        def __init__(self, engine, make_env, cfg, **kwargs):
            seen["cfg"] = cfg

        def run_sync(self, todo):
            return []

        def close(self):
            pass

    class Engine:
        def close(self):
            pass

    monkeypatch.setattr(ev, "RolloutWorker", Worker)
    monkeypatch.setattr(ev, "make_engine", lambda cfg: Engine())
    args = _parse(["eval", "toolgym/Arithmetic-v0", "--model", "tiny", "--out", str(tmp_path / "o.jsonl"),
                   "--drift-check", "tokens", "--no-progress", "--episodes", "1"])
    assert args.func(args) == 0
    assert seen["cfg"].drift_check == "tokens" and seen["cfg"].temperature == 0.0


def test_summary_counts_drift_by_kind_once_per_episode():
    events = [DriftEvent(turn=1, kind="template", position=9, action="split"), DriftEvent(turn=2, kind="tokenization",
                                                                                         position=30)]
    ts = [Trajectory(env_id="e", task_id="a", reward=1.0, drift=events, metadata={"temperature": 0.0}),
          Trajectory(env_id="e", task_id="a", segment=1, drift=events),  # a later segment repeats the episode's list
          Trajectory(env_id="e", task_id="b", sample_index=0, drift=events[:1], metadata={"temperature": 1.0}),
          Trajectory(env_id="e", task_id="c", sample_index=0)]
    s = summarize(ts, threshold=1.0)
    assert s.drift == {"template": 2, "tokenization": 1}
    assert s.temperatures == {"0.0": 1, "1.0": 1, "unknown": 1}


RUN_CONFIG = """\
env:
  id: me/Words-v0
  kwargs_for: me/Words-v0
  kwargs: {size: 3}
  eval_split: test
engine:
  kind: hf
rollout:
  max_new_tokens: 64
  temperature: 1.0
eval_rollout:
  max_new_tokens: 96
  max_turns: 5
  temperature: 0.0
  chat_template: compact
"""


def test_run_dir_supplies_what_training_used_and_flags_still_win(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(RUN_CONFIG)
    with pytest.raises(ConfigError, match="no final/ policy"):
        resolve_args(_parse(["eval", "--run-dir", str(run), "--out", "o"]))
    (run / "final").mkdir()
    args = _parse(["eval", "--run-dir", str(run), "--out", "o", "--max-turns", "2", "--env-arg", "size=4"])
    assert resolve_args(args) == {"size": 4}  # the run's kwargs, then --env-arg
    assert (args.env_id, args.model, args.split, args.engine) == ("me/Words-v0", str(run / "final"), "test", "hf")
    assert (args.max_new_tokens, args.max_turns, args.temperature, args.chat_template) == (96, 2, 0.0, "compact")
    with pytest.raises(ConfigError, match="not a training run directory"):
        resolve_args(_parse(["eval", "--run-dir", str(tmp_path), "--out", "o"]))
    with pytest.raises(ConfigError, match="needs an environment id"):
        resolve_args(_parse(["eval", "--model", "tiny", "--out", "o"]))
