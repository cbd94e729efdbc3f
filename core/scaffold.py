"""``toolgym init NAME``: scaffold a new environment pack.

The pack is a directory ``NAME/`` with a ``pyproject.toml`` (setuptools, depends on toolgym,
one ``toolgym.envs`` entry point), an import package ``<module>_pkg`` holding one small working
environment (tasks, one tool, a rubric and a demonstration), a test and a README. It passes
``toolgym check`` as generated; edit ``envs.py`` to make it your own.
"""

from __future__ import annotations

import re
from pathlib import Path

from toolgym.errors import ConfigError

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "__NAME__"
version = "0.1.0"
description = "toolgym environment pack __NAME__"
readme = "README.md"
requires-python = ">=3.11"
license = { text = "Apache-2.0" }
dependencies = ["toolgym"]

[project.entry-points."toolgym.envs"]
__NAME__ = "__PKG__.envs:register"

# Every env id register() makes, and its class: `import toolgym` registers these with Gymnasium
# without importing the pack, so `gymnasium.make("__NAME__/Example-v0")` works at once.
[project.entry-points."toolgym.env_ids"]
"__NAME__/Example-v0" = "__PKG__.envs:ExampleEnv"

# Its training config: `toolgym train env=__NAME__` finds __PKG__/conf/env/__NAME__.yaml.
[project.entry-points."toolgym.conf"]
__NAME__ = "__PKG__.conf"

[tool.setuptools]
packages = ["__PKG__", "__PKG__.conf"]

[tool.setuptools.package-data]
"__PKG__" = ["toolgym_pack.json"]
"__PKG__.conf" = ["env/*.yaml"]

# What the envs need at run time beyond Python packages; recorded in the pack's manifest.
[tool.toolgym]
requires = {}  # e.g. { sandbox_image = "toolgym-sandbox:bookworm", memory = "512m" }
'''

_ENVS = '''\
"""Environments of the __NAME__ toolgym pack."""

from __future__ import annotations

import json
from typing import Any

import toolgym
from toolgym.envs.base import ToolEnv
from toolgym.envs.task import ListTasks, Task
from toolgym.envs.tools import tool
from toolgym.verifiers.checks import exact_match
from toolgym.verifiers.rubric import Rubric

WORDS = {"train": ["tool", "agent", "reward", "policy", "rollout", "gradient", "sample", "token"],
         "eval": ["verifier", "sandbox", "episode", "rubric"]}


@tool(timeout=None)
def reverse(text: str) -> str:
    """Reverse a string.

    Args:
        text: The string to reverse.
    """
    return text[::-1]


class ExampleEnv(ToolEnv):
    """Reverse a word with the ``reverse`` tool; finish with ``Answer: <reversed word>``."""

    system_prompt = "Use the reverse tool, then finish with a line 'Answer: X'."
    default_max_turns = 3

    def load_tasks(self, split: str) -> ListTasks:
        return ListTasks([Task(id=f"reverse-{split}-{i}", prompt=f"Reverse the word '{w}'.", answer=w[::-1],
                               split=split, metadata={"word": w}) for i, w in enumerate(WORDS[split])])

    def make_tools(self) -> list[Any]:
        return [reverse]

    def make_rubric(self) -> Rubric:
        return Rubric([exact_match])

    def demonstration(self, task: Task) -> list[dict[str, Any]]:
        call = json.dumps({"name": "reverse", "arguments": {"text": task.metadata["word"]}})
        return [*self.initial_messages(task),
                {"role": "assistant", "content": f"<tool_call>\\n{call}\\n</tool_call>"},
                {"role": "tool", "tool_call_id": "call_0", "name": "reverse", "content": task.answer},
                {"role": "assistant", "content": f"Answer: {task.answer}"}]


def register() -> None:
    """Entry point of the ``toolgym.envs`` group: registers this pack's environments."""
    toolgym.register("__NAME__/Example-v0", entry_point="__PKG__.envs:ExampleEnv", pack="__NAME__")
'''

_TEST = '''\
from __future__ import annotations

import toolgym
from toolgym.envs.conformance import run_checks

from __PKG__.envs import register


def test_example_env_passes_conformance() -> None:
    register()
    report = run_checks("__NAME__/Example-v0")
    assert report.passed, [(r.name, r.detail) for r in report.results if not r.passed]


def test_demonstration_scores_full_reward() -> None:
    register()
    env = toolgym.make("__NAME__/Example-v0", split="eval").unwrapped
    env.reset(seed=0)
    task = env.state.task
    for m in env.demonstration(task):
        if m["role"] == "assistant":
            _, _, terminated, _, info = env.step(m)
    assert terminated and info["final_reward"] == 1.0
'''

_ENV_CONF = '''\
# @package _global_
# toolgym train env=__NAME__    (the __NAME__ pack's example env, with the generation settings it needs)
env:
  id: __NAME__/Example-v0
  kwargs_for: __NAME__/Example-v0  # env.id=OTHER drops these kwargs
  kwargs: {}
  train_split: train
  eval_split: eval
# What one turn of this env needs (a turn longer than max_new_tokens is cut and scores nothing);
# training and `toolgym eval --run-dir` use the same values. A recipe or the command line overrides.
rollout:
  max_new_tokens: 64
  max_turns: 4
eval_rollout:
  max_new_tokens: 64
  max_turns: 4
'''

_README = '''\
# __NAME__

A [toolgym](https://pypi.org/project/toolgym/) environment pack.

    pip install -e .
    toolgym envs                      # lists __NAME__/Example-v0
    toolgym check __NAME__/Example-v0
    pytest tests
    toolgym pack build .              # manifest + wheel and sdist in dist/
    toolgym train env=__NAME__        # trains on it with __PKG__/conf/env/__NAME__.yaml

The environments live in `__PKG__/envs.py`; `register()` there is the `toolgym.envs` entry point.
'''


def module_name(name: str) -> str:
    """The import package of a pack name.

    Example:
        >>> module_name("my-pack2")
        'my_pack2_pkg'
    """
    return validate_name(name).replace("-", "_") + "_pkg"


def validate_name(name: str) -> str:
    """Accept lowercase letters, digits and single dashes, starting with a letter; else ``ConfigError``.

    Example:
        >>> validate_name("word-tools")
        'word-tools'
    """
    if not NAME_RE.match(name):
        raise ConfigError(f"invalid pack name {name!r}: use lowercase letters, digits and single dashes, "
                          f"starting with a letter (e.g. 'word-tools')")
    return name


def scaffold(name: str, parent: Path) -> Path:
    """Create the pack directory ``parent/name``; an existing one is never overwritten.

    Returns:
        The new pack's directory.
    """
    pkg = module_name(name)
    root = Path(parent) / name
    if root.exists():
        raise ConfigError(f"{root} already exists; choose another name or --dir")
    files = {"pyproject.toml": _PYPROJECT, f"{pkg}/__init__.py": f'"""The {name} toolgym pack."""\n',
             f"{pkg}/envs.py": _ENVS, f"{pkg}/conf/__init__.py": '"""Hydra configs of this pack."""\n',
             f"{pkg}/conf/env/{name}.yaml": _ENV_CONF, "tests/test_env.py": _TEST, "README.md": _README}
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.replace("__NAME__", name).replace("__PKG__", pkg))
    return root
