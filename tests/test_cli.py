"""The command line: envs, check (pass and fail), play, and clear errors."""

from __future__ import annotations

import argparse

import pytest

import toolgym
from toolgym.cli import cmd_play, main
from toolgym.envs import ListTasks, Task, ToolEnv, tool
from toolgym.verifiers import Rubric


def test_envs_lists_builtins(capsys):
    assert main(["envs"]) == 0
    out = capsys.readouterr().out
    assert "toolgym/Arithmetic-v0" in out and "calculator" in out


def test_check_passes_for_arithmetic(capsys):
    assert main(["check", "toolgym/Arithmetic-v0"]) == 0
    out = capsys.readouterr().out
    assert "oracle_demonstrations" in out and "picklable" in out and "FAIL" not in out


def test_check_passes_env_args_to_the_env(capsys):
    assert main(["check", "toolgym/Arithmetic-v0", "--env-arg", "difficulty=1"]) == 0
    assert "FAIL" not in capsys.readouterr().out
    # an argument the env does not take fails the check run (reported, exit 1), not the CLI
    assert main(["check", "toolgym/Arithmetic-v0", "--env-arg", "difficulty_level=1"]) == 1
    assert "difficulty_level" in capsys.readouterr().out


@tool(timeout=None)
def crash(x: int) -> str:
    """Always fails.

    Args:
        x: Ignored.
    """
    raise RuntimeError("boom")


class LyingEnv(ToolEnv):
    """Its demonstration does not earn the maximum reward: check must say so."""

    def load_tasks(self, split):
        return ListTasks([Task(id="0", prompt="say 1", answer="1")])

    def make_tools(self):
        return [crash]

    def make_rubric(self):
        return Rubric([lambda answer, reference: float(answer == reference)])

    def demonstration(self, task):
        return [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": "Answer: 2"}]


def test_check_fails_on_a_broken_env(capsys):
    toolgym.register("tests/Lying-v0", entry_point=f"{__name__}:LyingEnv")
    assert main(["check", "tests/Lying-v0"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "demonstration" in out


def test_unknown_env_is_a_clear_error(capsys):
    assert main(["check", "toolgym/Arithmatic-v0"]) == 2
    assert "Did you mean 'toolgym/Arithmetic-v0'" in " ".join(capsys.readouterr().err.split())


def test_play_runs_an_episode_from_typed_turns(capsys):
    env = toolgym.make("toolgym/Arithmetic-v0", split="eval").unwrapped
    env.reset(seed=3)
    answer = env.state.task.answer
    turns = iter(['<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>',
                  f"Answer: {answer}"])
    args = argparse.Namespace(env_id="toolgym/Arithmetic-v0", seed=3, split="eval")
    assert cmd_play(args, read=lambda prompt: next(turns)) == 0
    out = capsys.readouterr().out
    assert "tool calculator: 42" in out and "final reward 1.000" in out


def test_bad_subcommand_exits_nonzero():
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code != 0


def test_a_command_module_that_fails_to_import_is_reported(monkeypatch, capsys):
    from toolgym import cli

    monkeypatch.setattr(cli, "_PLUGINS", [*cli._PLUGINS, ("toolgym.no_such_module", "add_parser")])
    parser = cli.build_parser()
    err = capsys.readouterr().err
    assert "toolgym.no_such_module are unavailable: ModuleNotFoundError" in err
    assert parser.parse_args(["envs"]).command == "envs"  # the other commands still work
