"""The built-in environments ship as packs (packs/), built and installed like any third-party pack."""

from __future__ import annotations

import json
import shutil
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

import toolgym
from toolgym.packs import build_pack, content_hash, installed_pack, probe_envs, read_pack

PACKS = sorted(p for p in (Path(__file__).resolve().parents[1] / "packs").iterdir() if (p / "pyproject.toml").is_file())


def test_every_builtin_env_comes_from_a_pack() -> None:
    assert {p.name for p in PACKS} >= {"arithmetic", "python-code", "search-qa"}
    builtin = {env_id: spec.pack for env_id, spec in toolgym.registered().items() if env_id.startswith("toolgym/")}
    assert builtin and all(pack.startswith("toolgym-") for pack in builtin.values()), builtin


@pytest.mark.parametrize("root", PACKS, ids=lambda p: p.name)
def test_pack_source_matches_what_is_installed(root: Path) -> None:
    src = read_pack(root)
    assert version(src.name) == src.version  # installed beside toolgym
    envs = probe_envs(src)  # imported from the pack's own directory
    assert envs and all(toolgym.spec(env_id).pack == src.name for env_id in envs)
    for env_id, tools in envs.items():
        assert tools == sorted(toolgym.make(env_id).unwrapped.tools), f"{env_id}: tools differ from the installed env"
    assert installed_pack(src.name) == {"pack": src.name, "pack_version": src.version,
                                        "pack_hash": content_hash(src.package_dir)}


@pytest.mark.slow
def test_builtin_pack_builds_a_wheel_with_its_manifest(tmp_path: Path) -> None:
    root = shutil.copytree(Path(__file__).resolve().parents[1] / "packs" / "python-code", tmp_path / "python-code",
                           ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "dist", "build"))
    manifest, built = build_pack(root, tmp_path / "dist")
    assert manifest.envs == {"toolgym/PythonCode-v0": ["python", "shell"]}
    assert manifest.requires["sandbox_image"] == "toolgym-sandbox:bookworm" and manifest.license == "Apache-2.0"
    wheel = next(p for p in built if p.suffix == ".whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = json.loads(zf.read("toolgym_python_code/toolgym_pack.json"))
        assert "toolgym_python_code/env.py" in zf.namelist()
    assert shipped["content_hash"] == manifest.content_hash == content_hash(root / "toolgym_python_code")
    assert any(p.name.endswith(".tar.gz") for p in built)
