"""Environment registry: ids to entry points, mirrored into Gymnasium's registry.

``toolgym.register("owner/Name-v0", entry_point="pkg.module:Class", **defaults)`` records the env
and registers it with Gymnasium. Third-party packs are found through the Python entry point group
``toolgym.envs``: each entry point names a function that registers the pack's envs (or a module
whose import does). The built-in environments ship the same way, as the packs in the repository's
``packs/`` folder.

A pack also *declares* its env ids in the group ``toolgym.env_ids`` (``"owner/Name-v0" =
"pkg.module:Class"``). ``import toolgym`` registers every declared id with Gymnasium from that
metadata alone, so ``gymnasium.make(id)`` works right after ``import toolgym`` and imports a pack
only when one of its envs is made (then the pack's own ``register()`` supplies its defaults).
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
DECLARED_GROUP = "toolgym.env_ids"
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
    declared = {ep.name for ep in entry_points(group=DECLARED_GROUP)}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _load_pack(ep, declared)
    return dict(pack_errors)


def _load_pack(ep: Any, declared: set[str]) -> None:
    """Run one pack's ``toolgym.envs`` entry point; a failure is recorded in ``pack_errors``."""
    before = set(_REGISTRY)
    try:
        target = ep.load()
        if callable(target):
            target()
    except Exception as exc:
        pack_errors[ep.name] = f"{type(exc).__name__}: {exc}"
        log.warning("toolgym: pack %r failed to load: %s", ep.name, exc)
    dist = ep.dist.name if ep.dist is not None else ep.name
    for env_id in sorted(set(_REGISTRY) - before):  # the distribution that registered an env is its pack
        if _REGISTRY[env_id].pack == "toolgym":
            _REGISTRY[env_id] = replace(_REGISTRY[env_id], pack=dist)
        if env_id not in declared:
            log.info("toolgym: pack %s registers %s without declaring it; add '\"%s\" = \"%s\"' under "
                     '[project.entry-points."%s"] so gymnasium.make finds it after `import toolgym`', dist,
                     env_id, env_id, _REGISTRY[env_id].entry_point, DECLARED_GROUP)


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


def declare_installed() -> list[str]:
    """Register with Gymnasium every env id installed packs declare (``toolgym.env_ids``), without
    importing them; returns the ids. Called by ``import toolgym``; a bad declaration is logged.

    Example:
        >>> "toolgym/Arithmetic-v0" in declare_installed()
        True
    """
    declared = []
    try:
        eps = entry_points(group=DECLARED_GROUP)
    except Exception as exc:  # unreadable metadata must not break ``import toolgym``
        log.warning("toolgym: reading the %s entry points failed: %s", DECLARED_GROUP, exc)
        return declared
    for ep in eps:
        if not ENV_ID.match(ep.name):
            log.warning("toolgym: %s declares %r, which is not an 'owner/Name-vN' id", ep.dist and ep.dist.name,
                        ep.name)
            continue
        declared.append(ep.name)
        if ep.name not in gym.registry:  # a real registration (already loaded) wins
            gym.register(id=ep.name, entry_point="toolgym.registry:make_declared",
                         kwargs={"_toolgym_id": ep.name}, disable_env_checker=True)
    return declared


def make_declared(_toolgym_id: str, **kwargs: Any) -> gym.Env:
    """Gymnasium's entry point for a declared, not yet loaded id: load the packs, then build the env
    with the defaults its pack registers (``gymnasium.make`` wraps what this returns)."""
    if _toolgym_id not in _REGISTRY:  # load only the pack that declares it (all of them if it is not found)
        mine = [ep for ep in entry_points(group=DECLARED_GROUP) if ep.name == _toolgym_id]
        dist = mine[0].dist.name if mine and mine[0].dist is not None else None
        packs = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.dist is not None and ep.dist.name == dist]
        for ep in packs:
            _load_pack(ep, {_toolgym_id})
        if _toolgym_id not in _REGISTRY:
            load_packs()
    errors = dict(pack_errors)
    found = _REGISTRY.get(_toolgym_id)
    if found is None:
        why = "; ".join(f"{name}: {err}" for name, err in errors.items()) or "its register() did not register it"
        raise ConfigError(f"environment {_toolgym_id!r} is declared by an installed pack but could not be "
                          f"loaded ({why})")
    module, _, name = found.entry_point.partition(":")
    return getattr(importlib.import_module(module), name)(**{**found.kwargs, **kwargs})
