"""``toolgym train``: the Hydra command line around :func:`toolgym.trainers.loop.train`.

    toolgym train                                   # the default recipe (tiny model, CPU, minutes)
    toolgym train trainer.steps=40 seed=1           # override anything
    toolgym train -m trainer.loss.loss_type=grpo,dapo seed=0,1   # a sweep (multirun)
    toolgym train resume=true                       # continue the last run of this run_dir

A run directory holds the resolved config (``.hydra/``), ``metrics.jsonl``, TensorBoard events,
``reward_curve.png``, ``checkpoints/`` and ``summary.json`` (held-out reward before and after).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from toolgym.trainers.config import TrainConfig, register_configs
from toolgym.trainers.loop import console, train


def _hydra_main(cfg: Any) -> float:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    typed: TrainConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    summary = train(typed, run_dir)
    console.print_json(json.dumps(summary))
    console.print(f"run directory: {run_dir}")
    return float(summary["eval_reward_after"])  # the objective sweepers (Optuna) maximise


def main(argv: list[str]) -> int:
    """Entry point for ``toolgym train ARGS``: hands the arguments to Hydra."""
    import hydra

    register_configs()  # with every pack's config package: `env=NAME` finds a pack's conf/env/NAME.yaml
    app = hydra.main(config_path="pkg://toolgym.conf", config_name="train", version_base="1.3")(_hydra_main)
    saved = sys.argv
    sys.argv = ["toolgym train", *argv]
    try:
        app()
    finally:
        sys.argv = saved
    return 0
