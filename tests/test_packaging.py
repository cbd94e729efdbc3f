"""The wheel installs everything under one import package, ``toolgym``."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_has_only_toolgym_at_the_top(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("toolgym-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"toolgym"}
    for module in ("toolgym/envs/base.py", "toolgym/verifiers/rubric.py", "toolgym/rollouts/worker.py",
                   "toolgym/rollouts/engines/hf.py", "toolgym/trainers/grpo.py", "toolgym/sandboxes/__init__.py",
                   "toolgym/search/__init__.py", "toolgym/envs/search_tools.py", "toolgym/envs/sandbox_tools.py",
                   "toolgym/conf/train.yaml", "toolgym/conf/recipe/optuna_lr.yaml"):
        assert module in names, module
    mapping = {"core": "toolgym", "envs": "toolgym/envs", "verifiers": "toolgym/verifiers",
               "rollouts": "toolgym/rollouts", "trainers": "toolgym/trainers", "sandboxes": "toolgym/sandboxes",
               "search": "toolgym/search", "conf": "toolgym/conf"}
    for folder, prefix in mapping.items():
        for path in (ROOT / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                rel = path.relative_to(ROOT / folder).as_posix()
                assert f"{prefix}/{rel}" in names, f"{folder}/{rel} is missing from the wheel"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "toolgym = toolgym.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
