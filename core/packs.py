"""Environment packs: third-party distributions that add environments to toolgym.

A *pack* is an ordinary Python distribution (wheel or sdist) with one import package that holds
its environments. It advertises them through the entry point group ``toolgym.envs``::

    [project.entry-points."toolgym.envs"]
    my-pack = "my_pack_pkg.envs:register"

The entry point names a function that calls ``toolgym.register(id, entry_point=..., pack=NAME)``
for each of the pack's envs. The pack also lists those ids in the group ``toolgym.env_ids``
(``"owner/Name-v0" = "pkg.module:Class"``) so that ``import toolgym`` registers them with Gymnasium
without importing the pack. ``toolgym`` imports every such entry point the first time the
registry is read (``toolgym envs``, ``toolgym.make``), so ``pip install my-pack`` is all it takes.

``toolgym init NAME`` scaffolds a new pack (see :mod:`toolgym.scaffold`); ``toolgym pack build
DIR`` copies DIR to a temporary directory, runs the conformance checks of every env the pack
registers (``--no-check`` skips them; a failing check builds nothing), writes the manifest into
the copy and builds its wheel and sdist into ``DIR/dist``. DIR itself is only read: no manifest,
``build/`` or ``*.egg-info`` appears in it, so a source tree under version control stays clean.

The manifest, ``toolgym_pack.json``, sits inside the built pack's import package (so it ships in
the wheel and sdist; it is never written into the source tree) and records, under spec version ``TOOLGYM_PACK_SPEC``:

- ``spec_version``: the version of this manifest format (``"1"``).
- ``name`` / ``version``: the distribution's name and version (from ``pyproject.toml``).
- ``envs``: each env id the pack registers, mapped to the names of its tools.
- ``license``: the license declared in ``pyproject.toml`` (``""`` when none).
- ``requires``: what the pack's envs need at run time beyond Python packages, from the pack's
  ``[tool.toolgym] requires`` table (e.g. ``sandbox_image``, ``memory``, ``search_index``).
- ``content_hash``: ``sha256:<hex>`` over the package's source and data files, taken in sorted
  path order as ``path NUL bytes NUL`` (the manifest itself and bytecode excluded), so two builds
  of the same sources carry the same hash.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, entry_points
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

from toolgym.errors import ConfigError
from toolgym.registry import ENTRY_POINT_GROUP

TOOLGYM_PACK_SPEC = "1"
MANIFEST_NAME = "toolgym_pack.json"
_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class PackManifest:
    """What a built pack contains; written as ``toolgym_pack.json`` in its import package.

    Example:
        >>> m = PackManifest(name="demo", version="0.1.0", envs={"demo/Example-v0": ["reverse"]},
        ...                  license="MIT", content_hash="sha256:00", requires={"sandbox_image": "python:3.11"})
        >>> PackManifest.from_json(m.to_json()) == m
        True
    """

    name: str
    version: str
    envs: dict[str, list[str]] = field(default_factory=dict)
    license: str = ""
    content_hash: str = ""
    requires: dict[str, str] = field(default_factory=dict)
    spec_version: str = TOOLGYM_PACK_SPEC

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PackManifest:
        data = json.loads(text)
        if str(data.get("spec_version")) != TOOLGYM_PACK_SPEC:
            raise ConfigError(f"pack manifest spec version {data.get('spec_version')!r} is not supported "
                              f"(this toolgym reads version {TOOLGYM_PACK_SPEC!r})")
        return cls(name=data["name"], version=data["version"], envs={k: list(v) for k, v in data["envs"].items()},
                   license=data.get("license", ""), content_hash=data.get("content_hash", ""),
                   requires={k: str(v) for k, v in data.get("requires", {}).items()})


@dataclass(frozen=True)
class PackSource:
    """A pack directory as read from its ``pyproject.toml``."""

    root: Path
    name: str
    version: str
    license: str
    entry_name: str  # the entry point's name in the toolgym.envs group
    entry_value: str  # "module.path:function"
    requires: dict[str, str] = field(default_factory=dict)  # [tool.toolgym] requires

    @property
    def package_dir(self) -> Path:
        """The top-level import package the entry point lives in."""
        return self.root / self.entry_value.split(":")[0].split(".")[0]


def _license(project: dict[str, Any]) -> str:
    lic = project.get("license", "")
    if isinstance(lic, dict):  # PEP 621 table form: {text = ...} or {file = ...}
        return str(lic.get("text") or lic.get("file") or "")
    return str(lic)


def read_pack(root: str | Path) -> PackSource:
    """Read a pack directory; a directory that is not a pack raises a ``ConfigError`` saying why."""
    root = Path(root).resolve()
    pyproject = root / "pyproject.toml"
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory")
    if not pyproject.is_file():
        raise ConfigError(f"{root} is not a toolgym pack: it has no pyproject.toml (create one with `toolgym init`)")
    try:
        data = tomllib.loads(pyproject.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{pyproject} is not valid TOML: {exc}") from None
    project = data.get("project", {})
    eps = project.get("entry-points", {}).get(ENTRY_POINT_GROUP, {})
    if not project.get("name") or not project.get("version"):
        raise ConfigError(f"{pyproject} has no [project] name and version")
    if len(eps) != 1:
        raise ConfigError(f"{root} is not a toolgym pack: pyproject.toml must declare exactly one entry point in "
                          f'[project.entry-points."{ENTRY_POINT_GROUP}"], found {len(eps)}')
    (entry_name, entry_value), = eps.items()
    requires = data.get("tool", {}).get("toolgym", {}).get("requires", {})
    if not isinstance(requires, dict):
        raise ConfigError(f"{pyproject}: [tool.toolgym] requires must be a table of names to strings")
    src = PackSource(root, project["name"], str(project["version"]), _license(project), entry_name, entry_value,
                     {k: str(v) for k, v in requires.items()})
    if ":" not in entry_value or not (src.package_dir / "__init__.py").is_file():
        raise ConfigError(f"entry point {entry_name} = {entry_value!r} must be 'package.module:function' with the "
                          f"package in {root}")
    return src


def content_hash(package_dir: Path) -> str:
    """sha256 over a package's files in sorted path order (manifest and bytecode excluded)."""
    digest = hashlib.sha256()
    files = [p for p in package_dir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
             and not p.name.endswith(_SKIP_SUFFIXES) and not _SKIP_DIRS & set(p.relative_to(package_dir).parts)]
    for path in sorted(files, key=lambda p: p.relative_to(package_dir).as_posix()):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return "sha256:" + digest.hexdigest()


# Runs in a fresh interpreter with the pack directory first on sys.path, so the pack's modules are
# imported from DIR (never a stale installed copy or one cached in this process). Installed packs
# are not loaded there, so only the built-ins and this pack's own register() fill the registry.
# With argv[2] == "check" it also runs the conformance checks on each env it found (same process:
# the pack is imported once, from the same files that are then built).
_PROBE = """
import json, sys, importlib
import toolgym
from toolgym import registry
from toolgym.registry import _REGISTRY
registry._packs_loaded = True
before = set(_REGISTRY)
module, _, fn = sys.argv[1].partition(":")
getattr(importlib.import_module(module), fn)()
envs, checks = {}, {}
for env_id in sorted(set(_REGISTRY) - before):
    env = toolgym.make(env_id).unwrapped
    envs[env_id] = sorted(env.tools)
    env.close()
if sys.argv[2:] == ["check"]:
    from toolgym.envs.conformance import run_checks
    for env_id in envs:
        checks[env_id] = [vars(r) for r in run_checks(env_id).results]
print(json.dumps({"envs": envs, "checks": checks}))
"""


@dataclass(frozen=True)
class EnvCheck:
    """One conformance check's result on one env of a pack, as ``toolgym pack build`` reports it."""

    env_id: str
    name: str
    passed: bool
    detail: str = ""


def _import_pack(src: PackSource, check: bool) -> tuple[dict[str, list[str]], list[EnvCheck]]:
    """Import the pack from ``src.root`` in a fresh interpreter: its envs and tools (and check results)."""
    path = [str(src.root), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    cmd = [sys.executable, "-c", _PROBE, src.entry_value, *(["check"] if check else [])]
    proc = subprocess.run(cmd, cwd=src.root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"importing pack {src.name} ({src.entry_value}) failed:\n{proc.stderr.strip()[-2000:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    if not found["envs"]:
        raise ConfigError(f"pack {src.name}: {src.entry_value} registered no environments")
    checks = [EnvCheck(env_id, r["name"], bool(r["passed"]), str(r.get("detail", "")))
              for env_id, results in found["checks"].items() for r in results]
    return found["envs"], checks


def probe_envs(src: PackSource) -> dict[str, list[str]]:
    """Env ids the pack registers and each env's tool names, read by importing the pack from its directory."""
    return _import_pack(src, check=False)[0]


def write_manifest(root: str | Path, envs: dict[str, list[str]] | None = None) -> PackManifest:
    """Compute a pack's manifest and write it into the import package under ``root``.

    :func:`build_pack` calls this on its temporary copy; calling it on a source tree writes there.

    Args:
        root: The pack directory.
        envs: The envs and tools, when already probed (:func:`probe_envs`); probed here otherwise.
    """
    src = read_pack(root)
    manifest = PackManifest(name=src.name, version=src.version, envs=envs or probe_envs(src), license=src.license,
                            content_hash=content_hash(src.package_dir), requires=dict(src.requires))
    (src.package_dir / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


@functools.cache
def installed_pack(dist_name: str) -> dict[str, str]:
    """Name, version and content hash of an installed pack, as recorded on trajectories.

    The hash is the built manifest's; for a pack installed from source in editable mode (no
    manifest yet) it is computed from the sources now, so local edits show up as a new hash.
    Envs registered by code rather than by a pack belong to ``toolgym`` itself (hash left empty).

    Example:
        >>> installed_pack("toolgym-arithmetic")["pack_hash"].startswith("sha256:")
        True
    """
    try:
        version = dist_version(dist_name)
    except PackageNotFoundError:
        return {"pack": dist_name, "pack_version": "", "pack_hash": ""}
    digest = ""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.dist is not None and ep.dist.name == dist_name:
            found = importlib.util.find_spec(ep.value.split(":")[0].split(".")[0])
            if found is not None and found.submodule_search_locations:
                package_dir = Path(next(iter(found.submodule_search_locations)))
                manifest = package_dir / MANIFEST_NAME
                digest = (PackManifest.from_json(manifest.read_text()).content_hash if manifest.is_file()
                          else content_hash(package_dir))
            break
    return {"pack": dist_name, "pack_version": version, "pack_hash": digest}


def _has_build_frontend() -> bool:
    try:
        dist_version("build")
        return True
    except PackageNotFoundError:
        return False


def _run_build(cmd: list[str], cwd: Path, what: str, name: str) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigError(f"building the {what} of pack {name} failed:\n{(proc.stdout + proc.stderr).strip()[-3000:]}")


# Never copied into the build: outputs of earlier builds and tools (top level of the pack only,
# where setuptools and venvs put them; a package may have a sub-package named build) ...
_TOP_LEVEL_SKIP = {"build", "dist", ".git", ".hg", ".venv", "venv", ".tox", ".nox"}
# ... and caches and egg-info anywhere.
_ANYWHERE_SKIP = ("__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "*.egg-info", "*.pyc")


@contextmanager
def staged_copy(root: Path, out: Path) -> Iterator[Path]:
    """A throw-away copy of the pack directory ``root`` to build in (removed on exit).

    Building writes a manifest, ``build/`` and ``*.egg-info`` beside the sources; doing it in a copy
    keeps the user's tree exactly as it was. ``out`` is never copied (it may lie inside ``root``).
    """
    anywhere = shutil.ignore_patterns(*_ANYWHERE_SKIP)

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = set(anywhere(directory, names))
        here = Path(directory).resolve()
        if here == root:
            skipped |= _TOP_LEVEL_SKIP & set(names)
        if out.parent == here and out.name in names:
            skipped.add(out.name)
        return skipped

    with tempfile.TemporaryDirectory(prefix="toolgym-pack-") as tmp:
        # symlinks are followed (their targets copied), as setuptools follows them building in place
        yield Path(shutil.copytree(root, Path(tmp) / root.name, ignore=ignore))


@dataclass
class PackBuild:
    """What ``toolgym pack build`` produced: the manifest, the built files and the check results."""

    manifest: PackManifest | None
    built: list[Path] = field(default_factory=list)
    checks: list[EnvCheck] = field(default_factory=list)

    @property
    def failed(self) -> list[EnvCheck]:
        return [c for c in self.checks if not c.passed]


def _build_dists(src: PackSource, dist: Path) -> list[Path]:
    """Wheel and sdist of the pack at ``src.root`` into ``dist`` (no build isolation: this environment's setuptools)."""
    dist.mkdir(parents=True, exist_ok=True)
    before = set(dist.iterdir())
    if _has_build_frontend():
        _run_build([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src.root)],
                   src.root, "wheel and sdist", src.name)
    else:
        _run_build([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(dist), str(src.root)], src.root, "wheel", src.name)
        # pip builds no sdists; call the PEP 517 hook of the declared backend (setuptools) directly.
        hook = f"import setuptools.build_meta as b; b.build_sdist({str(dist)!r})"
        _run_build([sys.executable, "-c", hook], src.root, "sdist", src.name)
    return sorted(set(dist.iterdir()) - before) or sorted(dist.glob("*"))


def build_and_check(root: str | Path, out: str | Path | None = None, *, check: bool = True) -> PackBuild:
    """Check and build a pack from a temporary copy of ``root``; ``root`` is left untouched.

    Args:
        root: The pack directory (read only).
        out: Where the wheel and sdist go (default: ``root/dist``).
        check: Run the conformance checks (:func:`toolgym.envs.conformance.run_checks`) on every env
            the pack registers first, importing the pack from the copy; when one fails nothing is
            built (``manifest`` is None and ``built`` empty).

    Returns:
        The manifest, the paths of the built distributions and the check results.
    """
    src = read_pack(root)
    dist = Path(out).resolve() if out else src.root / "dist"
    with staged_copy(src.root, dist) as copy_root:
        staged = read_pack(copy_root)
        envs, checks = _import_pack(staged, check)
        if any(not c.passed for c in checks):
            return PackBuild(None, [], checks)
        manifest = write_manifest(copy_root, envs)
        return PackBuild(manifest, _build_dists(staged, dist), checks)


def build_pack(root: str | Path, out: str | Path | None = None) -> tuple[PackManifest, list[Path]]:
    """Write the manifest and build wheel + sdist from a temporary copy of ``root`` (no conformance checks).

    Returns:
        The manifest and the paths of the built distributions.
    """
    result = build_and_check(root, out, check=False)
    assert result.manifest is not None  # only a failed check leaves it unset
    return result.manifest, result.built


def cmd_init(args: argparse.Namespace) -> int:
    from toolgym.scaffold import scaffold

    # a bad name raises ConfigError: toolgym.cli.main reports it in one line (exit 2)
    root = scaffold(args.name, Path(args.dir) if args.dir else Path.cwd())
    print(f"created pack {args.name} in {root}")
    return 0


def _print_checks(checks: list[EnvCheck]) -> None:
    for env_id in dict.fromkeys(c.env_id for c in checks):
        mine = [c for c in checks if c.env_id == env_id]
        print(f"check {env_id}: {sum(c.passed for c in mine)} of {len(mine)} passed")
        for c in mine:
            if not c.passed:
                print(f"  FAIL {c.name}: {' '.join(c.detail.split())[:300]}")


def cmd_pack_build(args: argparse.Namespace) -> int:
    # ConfigError / OSError propagate: toolgym.cli.main reports them in one line (exit 2)
    result = build_and_check(args.dir, args.out, check=not args.no_check)
    _print_checks(result.checks)
    if result.manifest is None:
        names = ", ".join(dict.fromkeys(f"{c.env_id} {c.name}" for c in result.failed))
        print(f"toolgym: error: conformance checks failed ({names}); nothing was built "
              "(fix them, or build anyway with --no-check)", file=sys.stderr)
        return 1
    manifest = result.manifest
    print(f"pack {manifest.name} {manifest.version}: {', '.join(manifest.envs)} ({manifest.content_hash})")
    for path in result.built:
        print(f"  built {path}")
    return 0


def add_parsers(subparsers: Any) -> None:
    """Add ``toolgym init`` and ``toolgym pack build`` to the CLI."""
    p = subparsers.add_parser("init", help="scaffold a new environment pack")
    p.add_argument("name", help="pack name: lowercase letters, digits and dashes")
    p.add_argument("--dir", default=None, help="parent directory (default: current directory)")
    p.set_defaults(func=cmd_init)
    pack = subparsers.add_parser("pack", help="environment pack tools")
    pack_sub = pack.add_subparsers(dest="pack_command", required=True)
    b = pack_sub.add_parser("build", help="check the pack's envs, then build wheel + sdist with its manifest "
                            "(from a temporary copy: DIR is not modified)")
    b.add_argument("dir", help="the pack directory")
    b.add_argument("--out", default=None, help="output directory (default: DIR/dist)")
    b.add_argument("--no-check", action="store_true", help="skip the conformance checks of the pack's envs")
    b.set_defaults(func=cmd_pack_build)
