"""The python-code pack on the local sandbox backend (the Docker backend is covered by toolgym's own tests)."""

from __future__ import annotations

from toolgym_python_code import PACK, TASKS

import toolgym
from toolgym.envs.conformance import run_checks
from toolgym.sandboxes import close_shared_pools
from toolgym.sandboxes.config import SandboxConfig


def test_registered_by_this_pack() -> None:
    assert toolgym.spec("toolgym/PythonCode-v0").pack == PACK == "toolgym-python-code"


def test_train_and_eval_tasks_are_disjoint() -> None:
    by_split: dict[str, set[str]] = {}
    for task in TASKS:
        by_split.setdefault(task.split, set()).add(task.name)
    assert set(by_split) == {"train", "eval"} and not by_split["train"] & by_split["eval"]


def test_conformance_including_reward_hacking_probes() -> None:
    config = SandboxConfig(backend="local", pool_size=2, timeout_s=5.0)
    try:
        report = run_checks("toolgym/PythonCode-v0", sandbox_config=config)
    finally:
        close_shared_pools()
    assert report.passed, [(r.name, r.detail) for r in report.results if not r.passed]
    assert "reward_hacking_probes" in {r.name for r in report.results}
