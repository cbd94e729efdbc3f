"""The README's example environment runs as written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_env_runs(tmp_path, monkeypatch):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    definitions, _, usage = block.partition('toolgym.register("me/Table-v0"')
    (tmp_path / "my_module.py").write_text(definitions)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_module", None)
    scope: dict = {}
    exec(compile(definitions + 'toolgym.register("me/Table-v0"' + usage, "README.md", "exec"), scope)
    assert scope["reward"] == 1.0 and scope["terminated"] and not scope["truncated"]
    assert scope["info"]["rubric"] == {"exact_match": 1.0}
