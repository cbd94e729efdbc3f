"""The README's "Train on your own environment" section works as written, in a fresh venv."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("## Train on your own environment")
    return text[start:text.index("\n## ", start + 1)]


def _fresh_venv(path: Path) -> Path:
    """A venv that sees this environment's packages (toolgym and its deps) but installs into its own."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "_parent_env.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    return python


@pytest.mark.slow
def test_the_commands_work_verbatim_in_a_fresh_venv(tmp_path):
    commands = re.search(r"```bash\n(.*?)```", _section(), re.DOTALL).group(1)
    venv = tmp_path / "venv"
    python = _fresh_venv(venv)
    shims = tmp_path / "shims"  # this venv has no pip of its own and no console scripts
    shims.mkdir()
    for name, line in {"pip": f'exec {python} -m pip "$@" --no-build-isolation --no-deps -q',
                       "toolgym": f'exec {python} -m toolgym.cli "$@"', "python": f'exec {python} "$@"'}.items():
        (shims / name).write_text(f"#!/bin/sh\n{line}\n")
        (shims / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{shims}:{venv / 'bin'}:{env['PATH']}"
    work = tmp_path / "work"
    work.mkdir()
    outputs = []
    for line in commands.splitlines():
        cmd = line.split("  #")[0].strip()
        if not cmd:
            continue
        proc = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout)
    assert re.fullmatch(r"Reverse the word '\w+'\.", outputs[2].strip()), outputs[2]  # gymnasium.make after import
    run = work / "runs" / "word-tools"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env"] == "word-tools/Example-v0" and summary["steps"] == 2
    evaluated = json.loads((run / "eval.jsonl.summary.json").read_text())
    assert evaluated["env_id"] == "word-tools/Example-v0" and evaluated["episodes"] == 4
