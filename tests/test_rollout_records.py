"""Trajectory records: JSON round trip, incremental JSONL, resume keys, Parquet, consistency checks."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from toolgym.errors import ErrorRecord, ToolError
from toolgym.rollouts.records import (
    SCHEMA_VERSION,
    Cost,
    DriftEvent,
    ToolResultRecord,
    Trajectory,
    TrajectoryWriter,
    Turn,
    done_keys,
    read_trajectories,
    to_parquet,
)


def _traj(task: str = "t0", sample: int = 0, **kw) -> Trajectory:
    base = dict(env_id="toolgym/Arithmetic-v0", task_id=task, sample_index=sample, token_ids=[1, 2, 3, 4, 5],
                loss_mask=[0, 0, 1, 1, 0], logprobs=[0.0, 0.0, -0.25, -1.5, 0.0], prompt_len=2,
                turns=[Turn(index=0, start=2, end=4, env_start=4, env_end=5,
                            tool_results=[ToolResultRecord("calculator", True, elapsed_s=0.01, chars=3)])],
                turn_rewards=[0.5], reward=1.5, rubric={"numeric_close": 1.0, "missing": None},
                drift=[DriftEvent(turn=1, kind="template", position=3, action="keep")],
                cost=Cost(prompt_tokens=2, completion_tokens=2, tool_calls=1), versions={"toolgym": "x"},
                messages=[{"role": "user", "content": "é ✓"}])
    base.update(kw)
    return Trajectory(**base)


def test_json_round_trip_keeps_every_field():
    t = _traj(error=ToolError("hung").to_record())
    back = Trajectory.from_json(t.to_json())
    assert back == t
    assert back.schema_version == SCHEMA_VERSION
    assert isinstance(back.turns[0].tool_results[0], ToolResultRecord)
    assert isinstance(back.error, ErrorRecord) and back.error.kind == "tool"


def test_newer_schema_is_refused_and_unknown_fields_ignored():
    d = _traj().to_dict()
    d["future_field"] = 1
    assert Trajectory.from_dict(d).task_id == "t0"
    d["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="newer"):
        Trajectory.from_dict(d)


def test_check_catches_misaligned_arrays():
    _traj().check()
    with pytest.raises(ValueError, match="lengths"):
        _traj(logprobs=[0.0]).check()
    with pytest.raises(ValueError, match="prompt"):
        _traj(loss_mask=[1, 0, 1, 1, 0]).check()
    with pytest.raises(ValueError, match="0.0"):
        _traj(logprobs=[0.0, 0.0, -0.25, -1.5, -2.0]).check()


def test_writer_appends_incrementally_and_resume_keys(tmp_path):
    path = tmp_path / "runs" / "r.jsonl"
    with TrajectoryWriter(path) as w:
        w.write(_traj("a", 0))
        assert len(read_trajectories(path)) == 1  # flushed per line
        w.write_all([_traj("a", 1), _traj("b", 0)])
    with TrajectoryWriter(path) as w:  # a second run appends
        w.write(_traj("c", 0))
    assert [t.key for t in read_trajectories(path)] == [("a", 0), ("a", 1), ("b", 0), ("c", 0)]
    assert done_keys(path) == {("a", 0), ("a", 1), ("b", 0), ("c", 0)}
    assert done_keys(tmp_path / "absent.jsonl") == set()


def test_torn_last_line_is_skipped_and_cut_before_appending(tmp_path):
    path = tmp_path / "r.jsonl"
    with TrajectoryWriter(path) as w:
        w.write(_traj("a"))
    with path.open("a") as fh:  # a crash mid-write
        fh.write(_traj("b").to_json()[:40])
    assert [t.task_id for t in read_trajectories(path)] == ["a"]
    with TrajectoryWriter(path) as w:
        w.write(_traj("c"))
    lines = path.read_text().splitlines()
    assert [json.loads(x)["task_id"] for x in lines] == ["a", "c"]


def test_parquet_export(tmp_path):
    ts = [_traj("a"), _traj("b", reward=0.0, error=ErrorRecord("model", "ModelError", "x", True))]
    table = pq.read_table(to_parquet(ts, tmp_path / "r.parquet"))
    assert table.num_rows == 2
    assert table.column("token_ids").to_pylist() == [[1, 2, 3, 4, 5]] * 2
    assert table.column("loss_mask").to_pylist()[0] == [0, 0, 1, 1, 0]
    assert table.column("logprobs").to_pylist()[0][2] == pytest.approx(-0.25)
    assert table.column("reward").to_pylist() == [1.5, 0.0]
    assert json.loads(table.column("error").to_pylist()[1])["kind"] == "model"
    assert json.loads(table.column("turns").to_pylist()[0])[0]["end"] == 4
