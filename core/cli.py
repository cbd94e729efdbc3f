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
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table

import toolgym
from toolgym.errors import ToolgymError

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
    env = toolgym.make(args.env_id, split=args.split).unwrapped
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


def cmd_train(argv: Sequence[str]) -> int:
    from toolgym.trainers.app import main as train_main

    return train_main(list(argv))


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
    p.add_argument("--split", default="eval")
    p.set_defaults(func=cmd_play)
    sub.add_parser("train", help="GRPO training (Hydra overrides follow)", add_help=False)
    for module, fn in _PLUGINS:
        try:
            getattr(importlib.import_module(module), fn)(sub)
        except Exception as exc:  # said out loud: a command that silently vanished looks like a typo
            print(f"toolgym: the commands of {module} are unavailable: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":  # Hydra parses its own arguments
        return cmd_train(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ToolgymError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
