"""The command line as a new user meets it: one-line errors, sampling values checked up front, pack build."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from toolgym.cli import error_line, main
from toolgym.errors import ConfigError
from toolgym.rollouts.worker import RolloutConfig
from toolgym.trainers.config import TrainConfig
from toolgym.trainers.grpo import TrainerConfig

NAME = "demo-pack"
PKG = "demo_pack_pkg"


def _toolgym(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``toolgym ARGV`` in a fresh process, as a user's shell runs it (stdin closed: nothing waits on input)."""
    return subprocess.run([sys.executable, "-m", "toolgym.cli", *argv], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "80", **env})


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{stderr}"
    assert lines[0].startswith("toolgym: error: ") and "Traceback" not in stderr
    return lines[0]


# ---- one-line errors -------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "says"), [
    (["play", "toolgym/Arithmetic-v0", "--split", "test"], "unknown split 'test'; choose from train, eval"),
    (["play", "toolgym/Arithmatic-v0"], "Did you mean 'toolgym/Arithmetic-v0'"),
    (["check", "nope/Nothing-v0"], "unknown environment id 'nope/Nothing-v0'"),
    (["pack", "build", "/nonexistent-pack-dir"], "is not a directory"),
    (["sweep-report", "/nonexistent-sweep-dir"], "is not a directory"),
])
def test_bad_input_is_one_line_and_status_2(argv: list[str], says: str) -> None:
    proc = _toolgym(*argv)
    assert proc.returncode == 2, proc.stderr
    # long messages stay on one line (no terminal-width wrapping), whatever COLUMNS says
    assert says in _one_error_line(proc.stderr)


@pytest.mark.parametrize(("override", "says"), [
    ("foo=1", "Could not override 'foo'"),
    ("rollout.temperature=abc", "could not be converted to Float"),
    ("env=nope", "available: arithmetic"),
    ("rollout.temperature=-1", "temperature must be >= 0"),
])
def test_bad_train_overrides_are_one_line_and_start_nothing(tmp_path: Path, override: str, says: str) -> None:
    proc = _toolgym("train", override, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr
    assert says in _one_error_line(proc.stderr)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "summary.json").exists()


def test_toolgym_debug_shows_the_traceback() -> None:
    proc = _toolgym("play", "toolgym/Arithmetic-v0", "--split", "test", TOOLGYM_DEBUG="1")
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr and "load_tasks" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("toolgym: error: ")


def test_error_line_keeps_what_and_why() -> None:
    pack = ConfigError("importing pack p (p.envs:register) failed:\nTraceback (most recent call last):\n"
                       '  File "x.py", line 1\nZeroDivisionError: division by zero')
    assert error_line(pack) == "importing pack p (p.envs:register) failed: ZeroDivisionError: division by zero"
    assert error_line(KeyError("no_such_tool")) == "KeyError: no_such_tool"
    assert error_line(FileNotFoundError(2, "No such file or directory", "x.gguf")).endswith("'x.gguf'")
    assert "\n" not in error_line(ValueError("a\n\nb\nc"))


# ---- sampling values checked when the config is made ----------------------------------------
@pytest.mark.parametrize(("kwargs", "says"), [
    ({"temperature": -1.0}, "temperature must be >= 0"),
    ({"temperature": float("nan")}, "temperature must be >= 0"),
    ({"top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"top_k": -2}, "top_k must be >= 0"),
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ({"max_turns": 0}, "max_turns must be >= 1"),
    ({"max_concurrency": 0}, "max_concurrency must be >= 1"),
])
def test_rollout_config_rejects_values_no_engine_can_use(kwargs: dict, says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace("[", r"\[").replace("]", r"\]")):
        RolloutConfig(**kwargs)


def test_rollout_config_accepts_the_edges() -> None:
    cfg = RolloutConfig(temperature=0.0, top_p=1.0, top_k=-1, max_new_tokens=1, max_turns=None)
    assert cfg.top_k == 0  # vLLM's "-1 = off" stored as the spelling every engine reads
    assert cfg.sampling(8).temperature == 0.0


@pytest.mark.parametrize("field_name", ["group_size", "tasks_per_step"])
def test_train_config_rejects_empty_groups(field_name: str) -> None:
    with pytest.raises(ConfigError, match=f"trainer.{field_name} must be >= 1"):
        TrainConfig(trainer=TrainerConfig(**{field_name: 0}))


def test_train_with_negative_temperature_exits_2_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hydra_full_error, stderr = os.environ.get("HYDRA_FULL_ERROR"), sys.stderr
    assert main(["train", "rollout.temperature=-1", f"hydra.run.dir={tmp_path}"]) == 2
    assert "rollout temperature must be >= 0" in _one_error_line(capsys.readouterr().err)
    # cmd_train sets HYDRA_FULL_ERROR and filters stderr only while Hydra runs
    assert os.environ.get("HYDRA_FULL_ERROR") == hydra_full_error and sys.stderr is stderr


# ---- pack build ------------------------------------------------------------------------------
def _listing(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else b"<dir>" for p in root.rglob("*")}


def _scaffold(parent: Path) -> Path:
    assert main(["init", NAME, "--dir", str(parent)]) == 0
    return parent / NAME


@pytest.mark.slow
def test_pack_build_leaves_the_source_tree_untouched_and_reports_checks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _scaffold(tmp_path)
    capsys.readouterr()
    before = _listing(root)
    assert main(["pack", "build", str(root)]) == 0
    out = capsys.readouterr().out
    after = _listing(root)
    added = sorted(set(after) - set(before))
    assert {k: after[k] for k in before} == before  # no source file changed
    assert added[0] == "dist" and all(a.startswith("dist/") for a in added[1:]), added
    assert {Path(a).suffix for a in added[1:]} == {".whl", ".gz"}
    assert f"check {NAME}/Example-v0:" in out and "FAIL" not in out
    [wheel] = (root / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:  # the manifest still ships, though it was never in the tree
        assert f"{PKG}/toolgym_pack.json" in zf.namelist()


@pytest.mark.slow
def test_pack_build_fails_on_a_failing_check_unless_told_not_to(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _scaffold(tmp_path)
    envs = root / PKG / "envs.py"
    # the oracle demonstration now answers wrongly: the conformance check must catch it
    envs.write_text(envs.read_text().replace('"content": f"Answer: {task.answer}"', '"content": "Answer: nope"'))
    capsys.readouterr()
    assert main(["pack", "build", str(root)]) == 1
    captured = capsys.readouterr()
    assert "FAIL oracle_demonstrations" in captured.out
    assert "oracle_demonstrations" in _one_error_line(captured.err) and "--no-check" in captured.err
    assert not (root / "dist").exists()  # nothing built from a pack that fails its checks
    out_dir = tmp_path / "wheels"
    assert main(["pack", "build", str(root), "--no-check", "--out", str(out_dir)]) == 0
    assert "check " not in capsys.readouterr().out
    assert list(out_dir.glob("*.whl")) and not (root / "dist").exists()
