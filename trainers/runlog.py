"""What a run writes as it goes: ``metrics.jsonl``, TensorBoard events and ``reward_curve.png``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from toolgym.trainers.grpo import write_jsonl

log = logging.getLogger("toolgym.train")


class RunLog:
    """metrics.jsonl, TensorBoard and the console line, in one place."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except Exception as exc:  # TensorBoard missing or broken: keep training
                log.warning("TensorBoard disabled: %s", exc)

    def write(self, kind: str, step: int, metrics: dict[str, float]) -> None:
        write_jsonl(self.path, {"kind": kind, "step": step, **metrics})
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{kind}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curve(run_dir: Path) -> Path | None:
    """reward_curve.png from metrics.jsonl: train reward per step and held-out evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [(r["step"], r["reward_mean"]) for r in rows if r["kind"] == "train"]
    evals = [(r["step"], r["reward"]) for r in rows if r["kind"] == "eval"]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train, strict=True), label="train reward (sampled)")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="held-out reward (greedy)")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / "reward_curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
