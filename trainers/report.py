"""``toolgym sweep-report DIR``: compare the runs of a Hydra multirun directory.

Reads each job's ``summary.json``, ``metrics.jsonl`` and ``.hydra/overrides.yaml``, prints a table
(one row per job: its overrides, held-out reward before/after, wall time) and writes
``sweep_report.md`` and ``sweep_curves.png`` (train reward per step, one line per job) into DIR.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from toolgym.errors import ConfigError


@dataclass
class JobResult:
    """One job of a sweep."""

    name: str
    overrides: list[str]
    summary: dict[str, Any]
    curve: list[tuple[int, float]] = field(default_factory=list)


def load_jobs(sweep_dir: Path) -> list[JobResult]:
    """Every finished job (a folder with ``summary.json``) under ``sweep_dir``."""
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir} is not a directory")
    jobs = []
    for summary_path in sorted(sweep_dir.rglob("summary.json")):
        job = summary_path.parent
        overrides_path = job / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.exists() else []
        curve = []
        metrics = job / "metrics.jsonl"
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                row = json.loads(line) if line.strip() else {}
                if row.get("kind") == "train":
                    curve.append((int(row["step"]), float(row["reward_mean"])))
        jobs.append(JobResult(str(job.relative_to(sweep_dir)), list(overrides or []),
                              json.loads(summary_path.read_text()), curve))
    if not jobs:
        raise ConfigError(f"no finished runs (summary.json) under {sweep_dir}")
    return jobs


def markdown_table(jobs: list[JobResult]) -> str:
    """The comparison as a Markdown table, best held-out reward first."""
    rows = sorted(jobs, key=lambda j: -(j.summary.get("eval_reward_after") or 0.0))
    lines = ["| job | overrides | eval before | eval after | gain | wall s |", "|---|---|---|---|---|---|"]
    for j in rows:
        s = j.summary
        before, after = s.get("eval_reward_before") or 0.0, s.get("eval_reward_after") or 0.0
        lines.append(f"| {j.name} | {' '.join(j.overrides) or '(defaults)'} | {before:.3f} | {after:.3f} | "
                     f"{after - before:+.3f} | {s.get('wall_s', 0)} |")
    return "\n".join(lines) + "\n"


def plot(jobs: list[JobResult], out: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(j.curve for j in jobs):
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for j in jobs:
        if j.curve:
            ax.plot(*zip(*j.curve, strict=True), label=" ".join(j.overrides) or j.name)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("train reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def run(args: argparse.Namespace) -> int:
    sweep_dir = Path(args.sweep_dir)
    jobs = load_jobs(sweep_dir)
    table = Table(title=f"sweep {sweep_dir}")
    for col in ("job", "overrides", "eval before", "eval after", "wall s"):
        table.add_column(col)
    for j in sorted(jobs, key=lambda j: -(j.summary.get("eval_reward_after") or 0.0)):
        s = j.summary
        table.add_row(j.name, " ".join(j.overrides), f"{s.get('eval_reward_before') or 0:.3f}",
                      f"{s.get('eval_reward_after') or 0:.3f}", str(s.get("wall_s", "")))
    Console().print(table)
    (sweep_dir / "sweep_report.md").write_text(markdown_table(jobs))
    plot(jobs, sweep_dir / "sweep_curves.png")
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("sweep-report", help="compare the runs of a multirun directory")
    p.add_argument("sweep_dir")
    p.set_defaults(func=run)
