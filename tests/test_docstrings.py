"""Every example in a docstring runs and prints what it says (house style: examples that run)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from importlib.metadata import entry_points

import pytest

import toolgym

SKIP = {"toolgym.sandboxes.executor"}  # runs inside the sandbox image, not importable as a library module


SUBPACKAGES = ["toolgym.envs", "toolgym.verifiers", "toolgym.sandboxes", "toolgym.search", "toolgym.rollouts",
               "toolgym.trainers"]
# the built-in packs (packs/): their import packages, found through the entry points they declare
PACKS = sorted({ep.value.split(":")[0].split(".")[0] for ep in entry_points(group="toolgym.envs")})


def modules() -> list[str]:
    # The subpackages live in their own folders (package-dir mapping), so walk each one.
    names = {info.name for info in pkgutil.iter_modules(toolgym.__path__, prefix="toolgym.")}
    for sub in SUBPACKAGES + PACKS:
        package = importlib.import_module(sub)
        names.add(sub)
        names.update(info.name for info in pkgutil.walk_packages(package.__path__, prefix=sub + "."))
    return sorted(n for n in names if n not in SKIP)


@pytest.mark.parametrize("name", modules())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
