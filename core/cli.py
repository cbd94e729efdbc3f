"""The ``toolgym`` command line.

    toolgym envs                     list registered environments (id, pack, tools)
    toolgym check [ENV_ID ...]       conformance checks (all envs when no id is given; --env-arg K=V)
    toolgym play ENV_ID              type the assistant's turns yourself
    toolgym eval ENV_ID --model ...  evaluate a model (see ``toolgym eval -h``)
    toolgym train [overrides]        GRPO training, a Hydra app (see ``toolgym train --help``)
    toolgym search build|serve       build or serve a search index
    toolgym sweep-report DIR         compare the runs of a Hydra multirun directory
    toolgym init NAME                scaffold an environment pack
    toolgym pack build DIR           build a pack's wheel and sdist with its manifest
    toolgym model import F.gguf DIR  convert a GGUF file into a checkpoint (``model path smollm2``)

Subcommands that need heavy imports (torch, Hydra) load them only when used.

A failure the user can fix (a bad id, path, value or Hydra override) prints one line,
``toolgym: error: ...``, to stderr and exits with status 2; ``TOOLGYM_DEBUG=1`` prints the
traceback too. Any other exception is a bug and keeps Python's traceback (status 1).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

import toolgym
from toolgym.errors import ConfigError, ToolgymError

console = Console()

# Optional subcommands contributed by subpackages: (module, function adding the sub-parser).
_PLUGINS = [("toolgym.rollouts.eval", "add_eval_parser"), ("toolgym.search.cli", "add_subparsers"),
            ("toolgym.trainers.report", "add_parser"), ("toolgym.packs", "add_parsers"),
            ("toolgym.rollouts.pretrained", "add_parser")]


def cmd_envs(args: argparse.Namespace) -> int:
    table = Table(title="toolgym environments")
    for col in ("id", "pack", "tools"):
        table.add_column(col)
    for env_id, spec in toolgym.registered().items():
        try:
            env = toolgym.make(env_id).unwrapped
            tools = ", ".join(env.tools)
            env.close()
        except Exception as exc:
            tools = f"[red]cannot make: {type(exc).__name__}: {exc}[/red]"
        table.add_row(env_id, spec.pack, tools)
    console.print(table)
    for pack, err in toolgym.load_packs().items():
        console.print(f"[yellow]pack {pack!r} failed to load: {err}[/yellow]")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from toolgym.envs.conformance import run_checks
    from toolgym.rollouts.eval import parse_env_args

    ids = args.env_ids or list(toolgym.registered())
    for env_id in ids:
        toolgym.spec(env_id)  # an unknown id is a usage error (exit 2) naming the closest ids
    env_kwargs = parse_env_args(args.env_arg)
    failed = 0
    for env_id in ids:
        report = run_checks(env_id, **env_kwargs)
        table = Table(title=f"toolgym check {env_id}")
        for col in ("check", "result", "detail"):
            table.add_column(col)
        for r in report.results:
            table.add_row(r.name, "[green]pass[/green]" if r.passed else "[red]FAIL[/red]", r.detail[:300])
        console.print(table)
        failed += not report.passed
    console.print(f"{len(ids) - failed} of {len(ids)} environments passed")
    return 1 if failed else 0


def cmd_play(args: argparse.Namespace, read: Callable[[str], str] = input) -> int:
    """Play one episode, reading the assistant turns from ``read``.

    Raises:
        ConfigError: The env id is unknown, or the env rejected its arguments (an env's own
            ``ValueError``, e.g. for an unknown split, is re-raised naming the env and the split).
    """
    toolgym.spec(args.env_id)  # an unknown id is its own error (closest ids), not the env's ValueError
    try:
        env = toolgym.make(args.env_id, split=args.split).unwrapped
    except ValueError as exc:
        if isinstance(exc, ToolgymError):
            raise
        # only the env knows its splits (its load_tasks rejects others): name the env and the flag
        raise ConfigError(f"{args.env_id} --split {args.split}: {exc}") from exc
    obs, info = env.reset(seed=args.seed)
    console.print(f"[bold]{args.env_id}[/bold] task {info['task_id']}; tools: {', '.join(env.tools) or 'none'}")
    for m in obs:
        console.print(f"[cyan]{m['role']}[/cyan]: {m['content']}")
    console.print("Type the assistant turn (a line; '\\n' for newlines). Tool calls: "
                  '<tool_call>{"name": ..., "arguments": {...}}</tool_call>')
    done = False
    while not done:
        try:
            action = read("assistant> ").replace("\\n", "\n")
        except EOFError:
            break
        obs, reward, term, trunc, info = env.step(action)
        for m in obs[len(obs) - info["tool_calls"]:] if info["tool_calls"] else []:
            console.print(f"[magenta]tool {m['name']}[/magenta]: {m['content']}")
        console.print(f"reward {reward:.3f}  terminated={term} truncated={trunc}")
        done = term or trunc
    if done:
        console.print(f"final reward {info['final_reward']:.3f}  rubric {info['rubric']}  answer {info['answer']!r}")
    env.close()
    return 0


class _DropJobBanner:
    """stderr that drops Hydra's ``Error executing job with overrides: [...]`` line.

    Hydra writes that line just before re-raising a failed job's exception; :func:`main` then
    reports the exception itself in one line, so the banner would be a second line saying less.
    Everything else is passed through untouched (training logs, progress bars).
    """

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        if text.startswith("Error executing job with overrides:"):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def cmd_train(argv: Sequence[str]) -> int:
    """Hand ``argv`` to the Hydra app; its errors propagate to :func:`main` instead of Hydra's report.

    ``HYDRA_FULL_ERROR=1`` makes Hydra re-raise (it would otherwise print a trimmed traceback and
    exit 1 itself); both it and stderr are restored afterwards, so a caller in-process is unaffected.
    """
    from toolgym.trainers.app import main as train_main

    saved_env, saved_err = os.environ.get("HYDRA_FULL_ERROR"), sys.stderr
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.stderr = _DropJobBanner(saved_err)  # type: ignore[assignment]
    try:
        return train_main(list(argv))
    finally:
        sys.stderr = saved_err
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolgym", description="RL post-training of small LMs on tool use.")
    parser.add_argument("--version", action="version", version=f"toolgym {toolgym.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("envs", help="list registered environments").set_defaults(func=cmd_envs)
    p = sub.add_parser("check", help="conformance checks for environments")
    p.add_argument("env_ids", nargs="*", help="ids to check (default: all)")
    p.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="constructor argument for the env (JSON value or string), repeatable")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("play", help="play an environment by typing the assistant turns")
    p.add_argument("env_id")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--split", default="eval", help="task split to draw the task from (default: eval; most envs "
                   "have train and eval)")
    p.set_defaults(func=cmd_play)
    sub.add_parser("train", help="GRPO training (Hydra overrides follow)", add_help=False)
    for module, fn in _PLUGINS:
        try:
            getattr(importlib.import_module(module), fn)(sub)
        except Exception as exc:  # said out loud: a command that silently vanished looks like a typo
            print(f"toolgym: the commands of {module} are unavailable: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (reported in one line), not a bug in toolgym."""
    types: list[type[BaseException]] = [ToolgymError, OSError, ValueError, KeyError]
    # Hydra and OmegaConf errors (a bad override, a missing config group) only exist once imported;
    # an exception cannot be one of theirs if the module was never loaded.
    for module, name in (("hydra.errors", "HydraException"), ("omegaconf.errors", "OmegaConfBaseException")):
        found = getattr(sys.modules.get(module), name, None)
        if found is not None:
            types.append(found)
    return tuple(types)


def _join(lines: list[str]) -> str:
    if len(lines) == 1:
        return lines[0]
    # first line says what failed, the last one (a traceback's exception line, a build tool's
    # final message) usually says why; the middle is detail for TOOLGYM_DEBUG=1
    return f"{lines[0].rstrip(':')}: {lines[-1]}" if lines[0].endswith(":") else f"{lines[0]} {lines[-1]}"


def error_line(exc: BaseException) -> str:
    """One line that says what went wrong, for ``toolgym: error: <line>``.

    Example:
        >>> error_line(ValueError("unknown split 'test'; choose from train, eval"))
        "ValueError: unknown split 'test'; choose from train, eval"
        >>> error_line(ConfigError("importing pack p failed:\\nTraceback ...\\nZeroDivisionError: division by zero"))
        'importing pack p failed: ZeroDivisionError: division by zero'
    """
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str) else str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    options = getattr(exc, "options", None)  # hydra's MissingConfigException: the group's choices
    if type(exc).__name__ == "MissingConfigException" and lines:
        line = lines[0] + (f" (available: {', '.join(options)})" if options else "")
    else:
        line = _join(lines) if lines else type(exc).__name__
    cause = exc.__cause__
    if cause is not None and type(cause).__module__.startswith("omegaconf") and str(cause).strip():
        line = f"{line}: {str(cause).strip().splitlines()[0]}"  # hydra's "Error merging override X": why
    if isinstance(exc, ValueError | KeyError) and not isinstance(exc, ToolgymError):
        line = f"{type(exc).__name__}: {line}"  # raised by any code: its type is part of the message
    return line


def report_error(exc: BaseException, stream: TextIO | None = None) -> int:
    """Print ``toolgym: error: <one line>`` (with the traceback when ``TOOLGYM_DEBUG=1``); returns 2."""
    stream = stream or sys.stderr
    if os.environ.get("TOOLGYM_DEBUG", "") not in ("", "0"):
        traceback.print_exception(exc, file=stream)
    print(f"toolgym: error: {error_line(exc)}", file=stream)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``toolgym ARGV``; returns the exit status (2 for bad input, reported in one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "train":  # Hydra parses its own arguments
            return cmd_train(argv[1:])
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if isinstance(exc, _user_error_types()):
            return report_error(exc)
        raise  # anything else is a bug: keep the traceback


if __name__ == "__main__":
    sys.exit(main())
