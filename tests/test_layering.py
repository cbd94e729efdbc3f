"""The floor never imports upward: each layer of toolgym imports only its own layer and the ones below.

Layers, bottom to top (the source folders come from pyproject's package-dir mapping):

0. floor: ``toolgym`` itself and its core modules (``errors``, ``paths``, ``aio``, ``registry``,
   ``packs``, ``scaffold``) and ``toolgym.conf``;
1. components: ``toolgym.sandboxes``, ``toolgym.verifiers``, ``toolgym.search``; each stands alone
   and imports no other component;
2. ``toolgym.envs``; the built-in packs (``packs/*``, environment plugins) sit on top of it and
   import nothing above it, and nothing imports a pack (they are reached through entry points);
3. ``toolgym.rollouts``;
4. ``toolgym.trainers``;
5. ``toolgym.cli``, the command line, may import anything.

Every ``import``/``from ... import`` counts, wherever it sits (module level, in a function, under
``if TYPE_CHECKING``), relative imports resolved to absolute, and so do ``importlib.import_module``
calls with a literal name.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP = 99
COMPONENTS = {"toolgym.sandboxes": 1, "toolgym.verifiers": 1, "toolgym.search": 1, "toolgym.envs": 2,
              "toolgym.rollouts": 3, "toolgym.trainers": 4, "toolgym.cli": TOP, "toolgym.conf": 0}
ENVS = COMPONENTS["toolgym.envs"]


def source_folders() -> dict[str, Path]:
    """Import package -> folder, from pyproject's ``[tool.setuptools] package-dir``, plus the packs."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = {pkg: ROOT / folder for pkg, folder in pyproject["tool"]["setuptools"]["package-dir"].items()}
    for pack in sorted((ROOT / "packs").iterdir()):
        for package in sorted(pack.glob("toolgym_*/__init__.py")):
            folders[package.parent.name] = package.parent
    return folders


def source_modules() -> dict[str, Path]:
    """Every module of every source folder: dotted name -> file."""
    folders = source_folders()
    mapped = {folder.resolve() for folder in folders.values()}
    modules: dict[str, Path] = {}
    for package, folder in folders.items():
        for dirpath, dirnames, filenames in os.walk(folder):
            here = Path(dirpath)
            # a folder mapped to a package of its own is walked as that package
            dirnames[:] = [d for d in dirnames if d != "__pycache__" and (here / d).resolve() not in mapped]
            parts = here.relative_to(folder).parts
            for filename in filenames:
                if filename.endswith(".py"):
                    stem = filename[:-3]
                    name = ".".join((package, *parts) + (() if stem == "__init__" else (stem,)))
                    modules[name] = here / filename
    return modules


def component(module: str) -> tuple[str, int] | None:
    """(component, layer) of a module; None for a module outside toolgym and its packs."""
    if module.startswith("toolgym_"):
        return module.split(".")[0], ENVS  # a pack
    if module != "toolgym" and not module.startswith("toolgym."):
        return None
    for prefix, layer in COMPONENTS.items():
        if module == prefix or module.startswith(prefix + "."):
            return prefix, layer
    return "toolgym", 0  # the floor: toolgym's core modules


def imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every import in a module's source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            yield node.lineno, source
            for alias in node.names:  # ``from toolgym import envs`` imports toolgym.envs
                if f"{source}.{alias.name}" in known:
                    yield node.lineno, f"{source}.{alias.name}"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def forbidden(owner: str, layer: int, target: str, target_layer: int) -> bool:
    """Whether a module of ``owner`` (at ``layer``) may not import one of ``target``."""
    if target == owner:
        return False
    if target.startswith("toolgym_"):
        return True  # packs are plugins: nothing imports one, another pack neither
    if owner.startswith("toolgym_"):
        return target_layer > ENVS
    return target_layer > layer or target_layer == layer == 1  # the components stand alone


def violations() -> list[str]:
    modules = source_modules()
    known = set(modules)
    found = []
    for name, path in sorted(modules.items()):
        owner, layer = component(name)  # type: ignore[misc]
        for line, target in imports(name, path, known):
            other = component(target)
            if other is not None and forbidden(owner, layer, *other):
                found.append(f"{path.relative_to(ROOT)}:{line}: {name} ({owner}, layer {layer}) imports "
                             f"{target} ({other[0]}, layer {other[1]})")
    return found


def test_every_component_has_a_source_folder():
    folders = source_folders()
    missing = [c for c in COMPONENTS if c != "toolgym.cli" and c not in folders]
    assert not missing, f"no package-dir mapping in pyproject.toml for {missing}"
    unplaced = [p for p in folders if p.startswith("toolgym.") and component(p) == ("toolgym", 0)]
    assert not unplaced, f"{unplaced} have no layer: add them to COMPONENTS in {Path(__file__).name}"
    assert (folders["toolgym"] / "cli.py").is_file()


def test_no_layer_imports_upward():
    found = violations()
    assert not found, "imports against the layering (lower layers must not import higher ones):\n" + "\n".join(found)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("from . import sibling\nfrom ..envs import base\n\ndef f():\n    import toolgym.trainers.grpo\n")
    found = sorted(imports("toolgym.sandboxes.mod", source, {"toolgym.sandboxes.sibling", "toolgym.envs.base"}))
    assert found == [(1, "toolgym.sandboxes"), (1, "toolgym.sandboxes.sibling"), (2, "toolgym.envs"),
                     (2, "toolgym.envs.base"), (5, "toolgym.trainers.grpo")]
    assert component("toolgym.errors") == ("toolgym", 0) and component("toolgym.search.index")[1] == 1
    assert component("verifiers") is None


@pytest.mark.parametrize("distribution", ["verifiers"])
def test_tests_import_installed_packages_not_the_checkout(distribution):
    # The checkout's own top-level folders (verifiers/, ...) must not shadow installed distributions.
    assert not any(Path(p or os.curdir).resolve() == ROOT for p in sys.path), sys.path
    module = pytest.importorskip(distribution)
    installed = Path(importlib.metadata.distribution(distribution).locate_file("")).resolve()
    where = Path(module.__file__).resolve()
    assert where.is_relative_to(installed) and not where.is_relative_to(ROOT / distribution), where
