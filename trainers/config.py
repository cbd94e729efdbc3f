"""The schema of ``toolgym train``: one dataclass per run, filled in by the YAML under ``conf/``.

Each component's own config sits beside its code (``ModelConfig`` in :mod:`toolgym.trainers.model`,
``TrainerConfig`` in :mod:`toolgym.trainers.grpo`, ``EngineConfig`` and ``RolloutConfig`` in
:mod:`toolgym.rollouts`, ``SandboxConfig`` in :mod:`toolgym.sandboxes`); :class:`TrainConfig` puts
them together and :func:`register_configs` stores it in Hydra's ConfigStore as ``train_schema``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from toolgym.rollouts.engines.base import EngineConfig
from toolgym.rollouts.worker import RolloutConfig
from toolgym.sandboxes.config import SandboxConfig
from toolgym.trainers.grpo import TrainerConfig
from toolgym.trainers.model import ModelConfig


@dataclass
class EnvConfig:
    """Which environment to train on, its constructor arguments, and its splits."""

    id: str = "toolgym/Arithmetic-v0"
    kwargs: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    eval_split: str = "eval"


@dataclass
class TrainConfig:
    """Everything ``toolgym train`` needs; YAML under conf/ fills it in."""

    recipe: str = "custom"
    seed: int = 0
    run_dir: str = "runs/custom"
    resume: bool = False
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval_rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(temperature=0.0))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)  # used by envs that run code
    tensorboard: bool = True
    cpu_threads: int | None = None  # torch threads on a CPU (None: the physical cores this process may use)


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore; YAML files extend ``train_schema``."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
