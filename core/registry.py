"""Environment registry: ids to entry points, mirrored into Gymnasium's registry.

``toolgym.register("owner/Name-v0", entry_point="pkg.module:Class", **defaults)`` records the env
and registers it with Gymnasium, so ``gymnasium.make`` works too. Third-party packs are found
through the Python entry point group ``toolgym.envs``: each entry point names a function that
registers the pack's envs (or a module whose import does). The built-in environments ship the
same way, as the packs in the repository's ``packs/`` folder.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import re
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any

import gymnasium as gym

from toolgym.errors import ConfigError

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "toolgym.envs"
ENV_ID = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)*-v\d+$")


@dataclass(frozen=True)
class EnvSpec:
    """A registered environment: where it lives, its defaults and which pack provided it."""

    id: str
    entry_point: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    pack: str = "toolgym"


_REGISTRY: dict[str, EnvSpec] = {}
_packs_loaded = False
pack_errors: dict[str, str] = {}


def register(id: str, entry_point: str, *, pack: str = "toolgym", **kwargs: Any) -> EnvSpec:
    """Register an environment with toolgym and Gymnasium.

    Args:
        id: ``owner/Name-vN``; the version is part of the id, so trajectories name the exact env.
        entry_point: ``"module.path:ClassName"`` (imported only when the env is made).
        pack: The distribution that provides it (shown by ``toolgym envs``).
        **kwargs: Default constructor arguments.

    Example:
        >>> spec = register("demo/Doc-v0", entry_point="toolgym_arithmetic:ArithmeticEnv", size=3)
        >>> make("demo/Doc-v0").unwrapped.tasks.size
        3
    """
    if not ENV_ID.match(id):
        raise ConfigError(f"environment id {id!r} must look like 'owner/Name-vN' (a namespace, a name and a "
                          "version, bumped whenever rewards or tasks change)")
    if ":" not in entry_point:
        raise ConfigError(f"entry_point must look like 'module.path:ClassName', got {entry_point!r}")
    spec = EnvSpec(id=id, entry_point=entry_point, kwargs=dict(kwargs), pack=pack)
    _REGISTRY[id] = spec
    if id in gym.registry:
        del gym.registry[id]
    gym.register(id=id, entry_point=entry_point, kwargs=dict(kwargs), disable_env_checker=True)
    return spec


def load_packs(force: bool = False) -> dict[str, str]:
    """Import every installed pack's entry point once; returns the packs that failed and why.

    A broken pack is reported, never fatal: the other packs and the built-in envs still load.
    """
    global _packs_loaded
    if _packs_loaded and not force:
        return dict(pack_errors)
    _packs_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        before = set(_REGISTRY)
        try:
            target = ep.load()
            if callable(target):
                target()
        except Exception as exc:
            pack_errors[ep.name] = f"{type(exc).__name__}: {exc}"
            log.warning("toolgym: pack %r failed to load: %s", ep.name, exc)
        dist = ep.dist.name if ep.dist is not None else ep.name
        for env_id in set(_REGISTRY) - before:  # the distribution that registered an env is its pack
            if _REGISTRY[env_id].pack == "toolgym":
                _REGISTRY[env_id] = replace(_REGISTRY[env_id], pack=dist)
    return dict(pack_errors)


def registered() -> dict[str, EnvSpec]:
    """Every known environment (built-ins and installed packs), by id."""
    load_packs()
    return dict(sorted(_REGISTRY.items()))


def spec(env_id: str) -> EnvSpec:
    """Look an id up; an unknown id raises a ``ConfigError`` naming the closest ids."""
    known = registered()
    if env_id in known:
        return known[env_id]
    close = difflib.get_close_matches(env_id, list(known), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"unknown environment id {env_id!r}.{hint} Installed ids: `toolgym envs`. A third-party "
                      f"pack must be pip-installed and expose the '{ENTRY_POINT_GROUP}' entry point.")


def env_class(env_id: str) -> type:
    """The class behind an id (imports its module)."""
    module, _, name = spec(env_id).entry_point.partition(":")
    return getattr(importlib.import_module(module), name)


def make(env_id: str, **kwargs: Any) -> gym.Env:
    """Create an environment by id, like ``gymnasium.make`` but with toolgym's lookup errors."""
    spec(env_id)
    return gym.make(env_id, **kwargs)
