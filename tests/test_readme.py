"""The README's example environments run as written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def run_example(text: str, module: str, env_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run the first python block of ``text``: what precedes ``toolgym.register(ENV_ID`` becomes
    ``module`` (the entry point the block registers), the rest runs as the reader's script."""
    block = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    marker = f'toolgym.register("{env_id}"'
    definitions, _, usage = block.partition(marker)
    (tmp_path / f"{module}.py").write_text(definitions)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(module, None)
    scope: dict = {}
    exec(compile(definitions + marker + usage, "README.md", "exec"), scope)
    return scope


def test_readme_example_env_runs(tmp_path, monkeypatch):
    scope = run_example(README.read_text(), "my_module", "me/Table-v0", tmp_path, monkeypatch)
    assert scope["reward"] == 1.0 and scope["terminated"] and not scope["truncated"]
    assert scope["info"]["rubric"] == {"exact_match": 1.0}


def test_the_sql_example_runs(tmp_path, monkeypatch):
    """The per-episode resource example of "Train on your own environment"."""
    text = README.read_text()
    section = text[text.index("## Train on your own environment"):]
    scope = run_example(section, "my_sql_module", "me/SQL-v0", tmp_path, monkeypatch)
    assert scope["reward"] == 1.0 and scope["terminated"] and not scope["truncated"]
    tools = [t["function"] for t in scope["env"].reset(seed=0)[1]["tools"]]
    assert tools[0]["name"] == "sql" and set(tools[0]["parameters"]["properties"]) == {"query"}  # db is hidden
    with pytest.raises(Exception, match="readonly"):
        scope["env"].unwrapped.state.resources["db"].execute("DELETE FROM t")
