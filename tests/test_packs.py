"""Environment packs: scaffold, build, publish to a local index, install into a fresh venv, use."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from toolgym.packs import MANIFEST_NAME, TOOLGYM_PACK_SPEC, PackManifest, content_hash

NAME = "demo-pack"
PKG = "demo_pack_pkg"
ENV_ID = f"{NAME}/Example-v0"


def _cli(*argv: str) -> int:
    from toolgym.cli import main

    return main(list(argv))  # as the toolgym command runs it: bad input is one line on stderr, exit 2


def _run(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen) -> None:
    for _ in range(100):
        assert proc.poll() is None, "http.server exited early"
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def _simple_index(root: Path, wheel: Path) -> None:
    """A PEP 503 'simple' index with one project."""
    project = root / NAME
    project.mkdir(parents=True)
    (project / wheel.name).write_bytes(wheel.read_bytes())
    (project / "index.html").write_text(f'<html><body><a href="{wheel.name}">{wheel.name}</a></body></html>\n')
    (root / "index.html").write_text(f'<html><body><a href="{NAME}/">{NAME}</a></body></html>\n')


def _fresh_venv(path: Path) -> Path:
    """A venv that sees this environment's packages (toolgym and its deps) but installs into its own."""
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)])
    python = path / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # --system-site-packages reaches the base interpreter only; when tests run inside a venv, its
    # site-packages (with its .pth files: editable installs) are added after the new venv's own.
    parent = sysconfig.get_paths()["purelib"]
    Path(site, "_parent_env.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return python


def test_init_rejects_bad_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("Bad", "under_score", "-dash", "9lives", "two--dashes", "a/b"):
        assert _cli("init", "--dir", str(tmp_path), "--", bad) == 2
        assert "invalid pack name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("init", NAME, "--dir", str(tmp_path)) == 0
    before = (tmp_path / NAME / PKG / "envs.py").read_text()
    assert _cli("init", NAME, "--dir", str(tmp_path)) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / NAME / PKG / "envs.py").read_text() == before


def test_build_rejects_non_pack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("pack", "build", str(tmp_path)) == 2
    assert "not a toolgym pack" in capsys.readouterr().err
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1"\n')
    assert _cli("pack", "build", str(tmp_path)) == 2
    assert "toolgym.envs" in capsys.readouterr().err
    assert not (tmp_path / "dist").exists()


def test_build_reports_a_broken_pack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("init", NAME, "--dir", str(tmp_path)) == 0
    envs = tmp_path / NAME / PKG / "envs.py"
    envs.write_text(envs.read_text().replace("def register() -> None:", "def register() -> None:\n    1 / 0"))
    assert _cli("pack", "build", str(tmp_path / NAME)) == 2
    err = capsys.readouterr().err
    assert "importing pack demo-pack" in err and "ZeroDivisionError" in err
    assert not (tmp_path / NAME / "dist").exists()


def test_manifest_roundtrip_and_spec_check() -> None:
    m = PackManifest(name=NAME, version="0.1.0", envs={ENV_ID: ["reverse"]}, license="MIT", content_hash="sha256:0")
    assert PackManifest.from_json(m.to_json()) == m
    data = json.loads(m.to_json())
    data["spec_version"] = "999"
    with pytest.raises(Exception, match="spec version"):
        PackManifest.from_json(json.dumps(data))


def test_content_hash_tracks_sources(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.json").write_text("[]")
    first = content_hash(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{}")  # the manifest itself is not part of the hash
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert content_hash(tmp_path) == first
    (tmp_path / "data" / "t.json").write_text("[1]")
    assert content_hash(tmp_path) != first


@pytest.mark.slow
def test_pack_init_build_publish_install(tmp_path: Path) -> None:
    assert _cli("init", NAME, "--dir", str(tmp_path)) == 0
    root = tmp_path / NAME
    env = {**os.environ, "PYTHONPATH": str(root)}
    _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=root, env=env)

    assert _cli("pack", "build", str(root)) == 0
    # built from a copy: the source tree gets dist/ and nothing else (no manifest, build/, egg-info)
    assert not (root / PKG / MANIFEST_NAME).exists() and not (root / "build").exists()
    assert not list(root.glob("*.egg-info"))
    wheels = list((root / "dist").glob("*.whl"))
    assert len(wheels) == 1 and list((root / "dist").glob("*.tar.gz"))
    with zipfile.ZipFile(wheels[0]) as zf:
        manifest = PackManifest.from_json(zf.read(f"{PKG}/{MANIFEST_NAME}").decode())
    assert manifest.spec_version == TOOLGYM_PACK_SPEC and manifest.name == NAME
    assert manifest.envs == {ENV_ID: ["reverse"]}
    assert manifest.content_hash == content_hash(root / PKG)

    index = tmp_path / "index"
    _simple_index(index, wheels[0])
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(index)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", server)
        python = _fresh_venv(tmp_path / "venv")
        _run([str(python), "-m", "pip", "install", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
              "--index-url", f"http://127.0.0.1:{port}/", NAME], cwd=tmp_path)
    finally:
        server.terminate()
        server.wait(timeout=10)

    venv_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"COLUMNS": "250"}
    where = _run([str(python), "-c", f"import {PKG}; print({PKG}.__file__)"], cwd=tmp_path, env=venv_env).stdout
    assert str(tmp_path / "venv") in where  # the installed copy, not the source tree
    shipped = Path(where.strip()).parent / MANIFEST_NAME
    assert PackManifest.from_json(shipped.read_text()) == manifest  # the manifest ships in the wheel
    listed = _run([str(python), "-m", "toolgym.cli", "envs"], cwd=tmp_path, env=venv_env).stdout
    assert ENV_ID in listed and "reverse" in listed
    _run([str(python), "-m", "toolgym.cli", "check", ENV_ID], cwd=tmp_path, env=venv_env)
    # Gymnasium first, as its users write it: the id is known after `import toolgym` alone.
    made = _run([str(python), "-c", "import sys, toolgym, gymnasium\n"
                 f"assert {PKG!r} not in sys.modules\n"
                 f"obs, info = gymnasium.make({ENV_ID!r}).reset(seed=0)\n"
                 "print(obs[-1]['role'], [t['function']['name'] for t in info['tools']])"],
                cwd=tmp_path, env=venv_env).stdout
    assert made.strip() == "user ['reverse']"
    # Training with the pack's own config group (env=NAME finds PKG/conf/env/NAME.yaml in the wheel).
    run_dir = tmp_path / "run"
    _run([str(python), "-m", "toolgym.cli", "train", f"env={NAME}", "trainer.steps=2", "trainer.sft.steps=4",
          "trainer.sft.demonstrations=16", "trainer.tasks_per_step=2", "trainer.group_size=2",
          "trainer.eval_episodes=2", "trainer.checkpoint_every=0", "tensorboard=false",
          f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=venv_env, timeout=600)
    resolved = (run_dir / ".hydra" / "config.yaml").read_text()
    assert f"id: {ENV_ID}" in resolved and "difficulty" not in resolved  # no other env's kwargs
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["env"] == ENV_ID and summary["steps"] == 2


@pytest.mark.parametrize("bad", ["Arithmetic", "toolgym/Arithmetic", "toolgym/Arithmetic-v", "a/b/c-v0", "x/y z-v1"])
def test_env_ids_need_an_owner_a_name_and_a_version(bad: str) -> None:
    from toolgym.errors import ConfigError
    from toolgym.registry import register

    with pytest.raises(ConfigError, match="owner/Name-vN"):
        register(bad, entry_point="toolgym_arithmetic:ArithmeticEnv")
