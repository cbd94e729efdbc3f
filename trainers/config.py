"""The schema of ``toolgym train``: one dataclass per run, filled in by the YAML under ``conf/``.

Each component's own config sits beside its code (``ModelConfig`` in :mod:`toolgym.trainers.model`,
``TrainerConfig`` in :mod:`toolgym.trainers.grpo`, ``EngineConfig`` and ``RolloutConfig`` in
:mod:`toolgym.rollouts`, ``SandboxConfig`` in :mod:`toolgym.sandboxes`); :class:`TrainConfig` puts
them together and :func:`register_configs` stores it in Hydra's ConfigStore as ``train_schema``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from hydra.core.config_store import ConfigStore

from toolgym.errors import ConfigError
from toolgym.rollouts.engines.base import EngineConfig
from toolgym.rollouts.worker import RolloutConfig
from toolgym.sandboxes.config import SandboxConfig
from toolgym.trainers.grpo import TrainerConfig
from toolgym.trainers.model import ModelConfig

log = logging.getLogger(__name__)
PACK_CONF_GROUP = "toolgym.conf"  # entry points naming a pack's Hydra config package


@dataclass
class EnvConfig:
    """Which environment to train on, its constructor arguments, and its splits.

    ``kwargs_for`` names the env the ``kwargs`` were written for (each ``conf/env`` file sets it):
    ``env.id=other/Env-v0`` on the command line then starts that env with no kwargs instead of
    handing it another env's (a warning says so). Empty: the kwargs apply to whatever ``id`` is.
    """

    id: str = "toolgym/Arithmetic-v0"
    kwargs: dict[str, Any] = field(default_factory=dict)
    kwargs_for: str = ""
    train_split: str = "train"
    eval_split: str = "eval"

    def env_kwargs(self) -> dict[str, Any]:
        """The kwargs for ``id``: ``{}`` when they were written for another env.

        Example:
            >>> EnvConfig(id="me/Mine-v0", kwargs={"difficulty": 1}, kwargs_for="toolgym/Arithmetic-v0").env_kwargs()
            {}
        """
        if self.kwargs_for and self.kwargs_for != self.id:
            log.warning("env.id=%s: dropping env.kwargs %s (written for %s); choose the env's own group "
                        "(env=NAME) or set env.kwargs_for=%s to keep them", self.id, dict(self.kwargs),
                        self.kwargs_for, self.id)
            return {}
        return dict(self.kwargs)


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

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Reject a run that cannot sample a batch, when Hydra builds the config (before any model loads).

        ``rollout`` and ``eval_rollout`` check their own sampling values (:meth:`RolloutConfig.check`).

        Raises:
            ConfigError: ``trainer.group_size``, ``trainer.tasks_per_step`` or ``trainer.steps`` is out of range.

        Example:
            >>> TrainConfig(trainer=TrainerConfig(group_size=0))
            Traceback (most recent call last):
            ...
            toolgym.errors.ConfigError: trainer.group_size must be >= 1 (episodes per task), got 0
        """
        t = self.trainer
        for name, value, what in (("group_size", t.group_size, "episodes per task"),
                                  ("tasks_per_step", t.tasks_per_step, "tasks per GRPO step")):
            if value < 1:
                raise ConfigError(f"trainer.{name} must be >= 1 ({what}), got {value}")
        if t.steps < 0:
            raise ConfigError(f"trainer.steps must be >= 0, got {t.steps}")


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore; YAML files extend ``train_schema``."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    register_pack_configs()


def pack_config_dirs() -> dict[str, str]:
    """``pkg://`` config packages that installed packs ship (entry point group ``toolgym.conf``).

    A pack's ``conf/env/NAME.yaml`` is then found by ``toolgym train env=NAME`` like a built-in one.
    """
    found = {}
    for ep in entry_points(group=PACK_CONF_GROUP):
        found[ep.dist.name if ep.dist is not None else ep.name] = f"pkg://{ep.value}"
    return found


def register_pack_configs() -> None:
    """Add every pack's config package to Hydra's search path (after toolgym's own, so built-in
    groups win a name clash)."""
    from hydra.core.config_search_path import ConfigSearchPath
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    class PackConfigs(SearchPathPlugin):
        def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
            for dist, path in pack_config_dirs().items():
                search_path.append(provider=f"toolgym-pack:{dist}", path=path)

    if not any(c.__name__ == "PackConfigs" for c in Plugins.instance().discover(SearchPathPlugin)):
        Plugins.instance().register(PackConfigs)
