"""`import toolgym` makes every installed pack's env known to Gymnasium without importing the pack."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import EntryPoint

import gymnasium as gym
import pytest

import toolgym
from toolgym import registry
from toolgym.errors import ConfigError

PROBE = """
import json, sys
import toolgym, gymnasium
before = {name: name in sys.modules for name in ("torch", "toolgym_arithmetic", "toolgym_search_qa")}
obs, info = gymnasium.make("toolgym/Arithmetic-v0").reset(seed=0)
print(json.dumps({"before": before, "after": "toolgym_arithmetic" in sys.modules,
                  "search_qa_after": "toolgym_search_qa" in sys.modules,
                  "role": obs[-1]["role"], "tools": [t["function"]["name"] for t in info["tools"]]}))
"""


def test_gymnasium_make_works_right_after_import_toolgym():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["before"] == {"torch": False, "toolgym_arithmetic": False, "toolgym_search_qa": False}
    assert seen["after"] and not seen["search_qa_after"]  # only the pack whose env was made is imported
    assert seen["role"] == "user" and seen["tools"] == ["calculator"]


def test_every_builtin_env_is_declared():
    # Other tests register their own ids at run time; only the ids installed packs register are compared.
    from_packs = {env_id for env_id, spec in toolgym.registered().items() if spec.pack.startswith("toolgym-")}
    assert from_packs >= {"toolgym/Arithmetic-v0", "toolgym/PythonCode-v0", "toolgym/SearchQA-v0"}
    assert set(toolgym.declare_installed()) >= from_packs


def test_a_declared_env_gets_its_packs_defaults_and_the_callers_kwargs():
    env = registry.make_declared("toolgym/Arithmetic-v0", size=5)
    assert env.tasks.size == 5


def test_a_bad_declaration_is_logged_not_fatal(monkeypatch, caplog):
    bad = [EntryPoint("not an id", "x:y", registry.DECLARED_GROUP),
           EntryPoint("test/Declared-v0", "nowhere:Env", registry.DECLARED_GROUP)]
    monkeypatch.setattr(registry, "entry_points", lambda group: bad if group == registry.DECLARED_GROUP else [])
    try:
        assert registry.declare_installed() == ["test/Declared-v0"]
        assert "not an 'owner/Name-vN' id" in caplog.text
        with pytest.raises(ConfigError, match="declared by an installed pack but could not be loaded"):
            gym.make("test/Declared-v0")
    finally:
        gym.registry.pop("test/Declared-v0", None)
