"""``toolgym eval``: run a model on an environment's tasks and summarise, resumably.

    toolgym eval toolgym/Arithmetic-v0 --model tiny --engine hf --episodes 20 --group 4 --out runs/eval.jsonl

Decoding is greedy (``--temperature 0``) unless told otherwise; pass@k with ``--group`` above 1
wants sampling (e.g. ``--temperature 1``). ``--drift-check tokens`` also detects tokenisation drift
(the canonical tokens of the text differ from the sampled ones), not only template drift.

Trajectories are appended to ``--out`` as they finish; re-running with the same ``--out`` skips
episodes already there, and the summary (mean reward, pass@k, turns, tool calls, errors by type,
drift events by kind, the temperatures the episodes were sampled at) covers the whole file. A
``<out>.summary.json`` is written beside it.

``--run-dir RUN`` evaluates a training run the way it was trained: the env id, its kwargs and eval
split, the trained policy (``RUN/final``), the engine and the eval generation settings
(``eval_rollout``: max new tokens, max turns, temperature, chat template) come from the run's
resolved config (``RUN/.hydra/config.yaml``); a flag given on the command line still wins.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolgym.errors import ConfigError
from toolgym.rollouts.engines import ENGINE_KINDS, EngineConfig, make_engine
from toolgym.rollouts.metrics import pass_at_ks, success_threshold
from toolgym.rollouts.records import Trajectory, TrajectoryWriter, done_keys, read_trajectories
from toolgym.rollouts.tokens import DRIFT_CHECKS
from toolgym.rollouts.worker import RolloutConfig, RolloutRequest, RolloutWorker


def parse_env_args(pairs: list[str]) -> dict[str, Any]:
    """``["difficulty=1", "system_prompt="]`` -> ``{"difficulty": 1, "system_prompt": ""}``.

    Example:
        >>> parse_env_args(["difficulty=1", "name=x y"])
        {'difficulty': 1, 'name': 'x y'}
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env-arg wants KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def load_template(value: str | None) -> str | None:
    """A template name passes through (resolved later); a path is read as Jinja source."""
    if value and Path(value).is_file():
        return Path(value).read_text()
    return value


def add_eval_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``eval`` sub-command to a ``toolgym`` argparse parser."""
    p = subparsers.add_parser("eval", help="evaluate a model on an environment (resumable)",
                              description=(__doc__ or "").replace("``", ""),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("env_id", nargs="?", help="environment id, e.g. toolgym/Arithmetic-v0 (default: the --run-dir's)")
    p.add_argument("--run-dir", default=None,
                   help="a training run directory: its env, policy and eval generation settings are the defaults")
    p.add_argument("--model", default=None, help="checkpoint path, hub id, served model name, or 'tiny'")
    p.add_argument("--engine", choices=ENGINE_KINDS, default=None, help="default: hf (or the run's engine)")
    p.add_argument("--episodes", type=int, default=20, help="tasks to evaluate (task indices 0..N-1)")
    p.add_argument("--group", type=int, default=1, help="samples per task (pass@k up to k=group)")
    p.add_argument("--out", required=True, help="JSONL file of trajectories (appended; resumable)")
    p.add_argument("--split", default=None, help="default: eval (or the run's eval split)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible server root (engine openai)")
    p.add_argument("--tokenizer", default=None, help="tokenizer path when it differs from --model")
    p.add_argument("--device", default=None)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 256 (or the run's eval_rollout)")
    p.add_argument("--max-turns", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None, help="0: greedy (the default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--drift-check", choices=DRIFT_CHECKS, default="text",
                   help="detect template drift (text), also tokenisation drift (tokens), or neither (off)")
    p.add_argument("--pass-threshold", type=float, default=None,
                   help="reward counted as solved (default: the rubric's maximum)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--chat-template", default=None,
                   help="template name (qwen, thinking, compact) or Jinja file overriding the tokenizer's")
    p.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="environment constructor argument (VALUE parsed as JSON when it can be), repeatable")
    p.set_defaults(func=run_eval)
    return p


@dataclass
class EvalSummary:
    """Aggregates over every trajectory of an eval file."""

    env_id: str
    episodes: int
    tasks: int
    mean_reward: float
    reward_stderr: float
    pass_at_k: dict[int, float]
    mean_turns: float
    mean_tool_calls: float
    mean_completion_tokens: float
    errors: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)
    drift: dict[str, int] = field(default_factory=dict)  # drift events by kind (template, tokenization)
    temperatures: dict[str, int] = field(default_factory=dict)  # episodes per sampling temperature
    new_episodes: int = 0
    temperature: float | None = None  # this run's setting
    drift_check: str | None = None  # this run's setting

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(trajectories: list[Trajectory], threshold: float, env_id: str = "") -> EvalSummary:
    """Summarise episodes (first segment of each) of an eval run."""
    episodes = [t for t in trajectories if t.segment == 0]
    by_task: dict[str, list[Trajectory]] = defaultdict(list)
    for t in episodes:
        by_task[t.task_id].append(t)
    passes = pass_at_ks({task: [t.reward for t in v] for task, v in by_task.items()}, threshold)
    rewards = [t.reward for t in episodes]
    errors = Counter(f"{t.error.kind}:{t.error.type}" for t in episodes if t.error)
    truncated = Counter(t.truncated_reason or "unknown" for t in episodes if t.truncated)
    # every segment of a split episode repeats the episode's drift list: count the first segment only
    drift = Counter(d.kind for t in episodes for d in t.drift)
    temperatures = Counter(str(t.metadata.get("temperature", "unknown")) for t in episodes)
    mean = statistics.fmean(rewards) if rewards else 0.0
    stderr = statistics.stdev(rewards) / math.sqrt(len(rewards)) if len(rewards) > 1 else 0.0
    return EvalSummary(
        env_id=env_id, episodes=len(episodes), tasks=len(by_task), mean_reward=mean, reward_stderr=stderr,
        pass_at_k=passes, mean_turns=_mean(len(t.turns) for t in episodes),
        mean_tool_calls=_mean(t.cost.tool_calls for t in episodes),
        mean_completion_tokens=_mean(t.cost.completion_tokens for t in episodes),
        errors=dict(errors), truncated=dict(truncated), drift=dict(drift), temperatures=dict(temperatures))


def _mean(values: Any) -> float:
    vals = list(values)
    return statistics.fmean(vals) if vals else 0.0


DEFAULTS = {"engine": "hf", "split": "eval", "max_new_tokens": 256, "temperature": 0.0}


def run_settings(run_dir: str | Path) -> dict[str, Any]:
    """What ``toolgym eval --run-dir`` takes from a training run: env, kwargs, policy, generation.

    Raises:
        ConfigError: the directory has no resolved config (``.hydra/config.yaml``) or no ``final/`` policy.
    """
    from omegaconf import OmegaConf

    run = Path(run_dir)
    resolved = run / ".hydra" / "config.yaml"
    if not resolved.is_file():
        raise ConfigError(f"{run} is not a training run directory: it has no .hydra/config.yaml")
    cfg = OmegaConf.to_container(OmegaConf.load(resolved), resolve=False)
    env, gen = cfg.get("env") or {}, cfg.get("eval_rollout") or cfg.get("rollout") or {}
    if not (run / "final").is_dir():
        raise ConfigError(f"{run} has no final/ policy yet (the run did not finish); give --model")
    kwargs = env.get("kwargs") or {}
    if env.get("kwargs_for") not in (None, env.get("id")):
        kwargs = {}  # the kwargs belong to another env (see EnvConfig.kwargs_for)
    engine = (cfg.get("engine") or {}).get("kind")
    return {"env_id": env.get("id"), "env_kwargs": dict(kwargs), "split": env.get("eval_split"),
            "model": str(run / "final"), "engine": engine if engine in ENGINE_KINDS else None,
            "max_new_tokens": gen.get("max_new_tokens"), "max_turns": gen.get("max_turns"),
            "temperature": gen.get("temperature"), "chat_template": gen.get("chat_template")}


def resolve_args(args: argparse.Namespace) -> dict[str, Any]:
    """Fill what the command line left unset from ``--run-dir`` (when given), then the defaults."""
    run = run_settings(args.run_dir) if args.run_dir else {}
    for key in ("env_id", "model", "engine", "split", "max_new_tokens", "max_turns", "temperature", "chat_template"):
        if getattr(args, key) is None:
            value = run.get(key)
            setattr(args, key, DEFAULTS.get(key) if value is None else value)
    if args.env_id is None:
        raise ConfigError("toolgym eval needs an environment id (or --run-dir RUN)")
    if args.model is None:
        raise ConfigError("toolgym eval needs --model (or --run-dir RUN)")
    return {**run.get("env_kwargs", {}), **parse_env_args(args.env_arg)}


def run_eval(args: argparse.Namespace) -> int:
    """Entry point of ``toolgym eval``; returns the process exit code."""
    import toolgym

    out = Path(args.out)
    env_kwargs = resolve_args(args)
    if args.group > 1 and args.temperature <= 0:
        from rich.console import Console

        Console(stderr=True).print(f"note: --group {args.group} with greedy decoding (--temperature 0) samples the "
                                   "same episode repeatedly; give --temperature 1 for a meaningful pass@k")
    make_env = lambda: toolgym.make(args.env_id, split=args.split, **env_kwargs).unwrapped  # noqa: E731
    probe = make_env()
    threshold = success_threshold(probe, args.pass_threshold)
    n_tasks = min(args.episodes, len(probe.tasks))
    task_ids = [probe.tasks[i].id for i in range(n_tasks)]
    probe.close()
    done = done_keys(out)
    todo = [RolloutRequest({"task_id": tid}, group_size=args.group)
            for tid in task_ids if any((tid, s) not in done for s in range(args.group))]
    remaining = sum((tid, s) not in done for tid in task_ids for s in range(args.group))
    new = _run(args, make_env, todo, done, out, remaining) if todo else 0
    everything = [t for t in read_trajectories(out) if t.task_id in set(task_ids)]
    summary = summarize(everything, threshold, args.env_id)
    summary.new_episodes, summary.temperature, summary.drift_check = new, args.temperature, args.drift_check
    Path(str(out) + ".summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    _print_summary(summary, out)
    return 0


def _run(args: argparse.Namespace, make_env: Any, todo: list[RolloutRequest], done: set[tuple[str, int]],
         out: Path, total: int) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if args.engine != "openai" and args.model.startswith((".", "/", "~")) and not Path(args.model).expanduser().exists():
        raise ConfigError(f"model path {args.model!r} does not exist (give a checkpoint directory, a hub id or 'tiny')")
    engine = make_engine(EngineConfig(kind=args.engine, model=args.model, device=args.device,
                                      base_url=args.base_url, tokenizer=args.tokenizer))
    cfg = RolloutConfig(max_new_tokens=args.max_new_tokens, max_turns=args.max_turns, temperature=args.temperature,
                        top_p=args.top_p, max_concurrency=args.concurrency, chat_template=load_template(args.chat_template),
                        drift_check=args.drift_check)
    progress = Progress(TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                        TimeRemainingColumn(), disable=args.no_progress)
    rewards: list[float] = []
    count = 0
    with TrajectoryWriter(out) as writer, progress:
        bar = progress.add_task("", total=total)

        def record(t: Trajectory) -> None:
            nonlocal count
            # Kept with each record: a resumed file may mix runs sampled at different temperatures.
            t.metadata["temperature"] = args.temperature
            writer.write(t)
            if t.segment == 0:
                count += 1
                rewards.append(t.reward)
                progress.update(bar, advance=1, description=f"mean reward {statistics.fmean(rewards):.3f}")

        worker = RolloutWorker(engine, make_env, cfg, env_id=args.env_id, model_version=str(args.model),
                               on_trajectory=record, skip=done)
        try:
            worker.run_sync(todo)
        finally:
            worker.close()
            engine.close()
    return count


def _print_summary(s: EvalSummary, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"toolgym eval {s.env_id}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("episodes (tasks)", f"{s.episodes} ({s.tasks})")
    table.add_row("new this run", str(s.new_episodes))
    if s.temperature is not None:
        table.add_row("temperature", "0 (greedy)" if s.temperature <= 0 else f"{s.temperature:g}")
    if len(s.temperatures) > 1:  # a resumed file sampled at several temperatures
        for temp, n in sorted(s.temperatures.items()):
            table.add_row(f"episodes at temperature {temp}", str(n))
    table.add_row("mean reward", f"{s.mean_reward:.3f} ± {s.reward_stderr:.3f}")
    for k, v in s.pass_at_k.items():
        table.add_row(f"pass@{k}", f"{v:.3f}")
    table.add_row("mean turns", f"{s.mean_turns:.2f}")
    table.add_row("mean tool calls", f"{s.mean_tool_calls:.2f}")
    table.add_row("mean completion tokens", f"{s.mean_completion_tokens:.1f}")
    for name, n in sorted(s.errors.items()):
        table.add_row(f"error {name}", str(n))
    for name, n in sorted(s.truncated.items()):
        table.add_row(f"truncated {name}", str(n))
    if s.drift_check is not None:
        table.add_row("drift check", s.drift_check)
    for kind, n in sorted(s.drift.items()):
        table.add_row(f"drift {kind}", str(n))
    if s.drift_check != "off":
        table.add_row("drift events", str(sum(s.drift.values())))
    console = Console()
    console.print(table)
    console.print(f"trajectories: {out}")
