"""Where a GRPO step's time goes: generation, tools, scoring, update and eval, per step and in total."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from toolgym.cli import main
from toolgym.rollouts.records import ToolResultRecord, Trajectory, Turn
from toolgym.trainers.loop import STEP_PHASES, RunState, step_line, tool_seconds

TINY = ["trainer.steps=2", "trainer.sft.steps=2", "trainer.sft.demonstrations=8", "trainer.tasks_per_step=2",
        "trainer.group_size=2", "trainer.eval_episodes=2", "trainer.eval_every=1", "trainer.checkpoint_every=0",
        "rollout.max_new_tokens=24", "eval_rollout.max_new_tokens=24", "tensorboard=false"]


def _traj(*turn_tools: list[float], segment: int = 0) -> Trajectory:
    turns = [Turn(index=i, start=0, end=0, tool_results=[ToolResultRecord("calculator", True, elapsed_s=s) for s in tools])
             for i, tools in enumerate(turn_tools)]
    return Trajectory(env_id="e", task_id="t", segment=segment, turns=turns)


def test_tool_seconds_sums_every_call_of_every_turn_once() -> None:
    groups = [[_traj([0.25, 0.5], [1.0]), _traj([])], [_traj([0.125], segment=0), _traj([2.0], segment=1)]]
    assert tool_seconds(groups) == pytest.approx(3.875)
    assert tool_seconds([]) == 0.0


def test_run_state_totals_phases_and_survives_a_checkpoint() -> None:
    state = RunState()
    for _ in range(3):
        state.add_step_phases({"time/generation_s": 1.5, "time/tools_s": 0.0004, "time/update_s": 0.25})
    assert state.step_phase_s == pytest.approx({"generation": 4.5, "tools": 0.0012, "scoring": 0.0, "update": 0.75,
                                                "eval": 0.0})
    assert RunState.from_dict(state.to_dict()).step_phase_s == state.step_phase_s
    assert RunState.from_dict({"step": 2}).step_phase_s == {}  # a checkpoint written before phases existed


def test_step_line_names_every_phase() -> None:
    metrics = {"reward_mean": 0.5, "reward_std": 0.1, "pass_rate": 0.5, "tokens_per_s": 10.0,
               **{f"time/{p}_s": float(i) for i, p in enumerate(STEP_PHASES)}}
    line = step_line(3, metrics)
    assert "generation 0.00s  tools 1.00s  scoring 2.00s  update 3.00s  eval 4.00s" in line


@pytest.mark.slow
def test_tiny_run_logs_phase_timings_and_totals_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *TINY, f"hydra.run.dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:
        assert all(r[f"time/{p}_s"] >= 0 for p in STEP_PHASES), r
        assert r["time/generation_s"] > 0 and r["time/update_s"] > 0 and r["time/scoring_s"] > 0
        assert r["time/generation_s"] == r["generate_s"]  # the older key is kept, with the same value
    # eval_every=1: held-out eval inside step 1; the last step's eval is the final one, outside the steps
    assert train[0]["time/eval_s"] > 0 and train[1]["time/eval_s"] == 0
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 0, 1, 2]
    flat = " ".join(out.split())  # the console wraps long lines at the terminal's width
    for step in (1, 2):
        phases = " ".join(rf"{p} [0-9.]+s" for p in STEP_PHASES)
        assert re.search(rf"step {step} reward .*? {phases}", flat), flat
    summary = json.loads((tmp_path / "summary.json").read_text())
    totals = summary["step_phase_s"]
    assert list(totals) == list(STEP_PHASES)
    for p in STEP_PHASES:
        assert totals[p] == pytest.approx(sum(r[f"time/{p}_s"] for r in train), abs=2e-3)
    # the phases are parts of the steps' wall time (tools overlap generation, so it is left out)
    inside = sum(totals[p] for p in STEP_PHASES if p != "tools")
    assert inside <= summary["phase_s"]["grpo"] + 0.2
