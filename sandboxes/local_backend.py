"""Local backend: the same executor as a local process, for machines with no Docker engine.

It comes in two modes; ``auto`` only ever picks the first.

``local`` (the executor under bubblewrap; needs ``bwrap`` that can create namespaces here) isolates:
    * Namespaces: new mount, PID, IPC, UTS and network namespaces (the only interface is a
      loopback of its own: the host's listeners are unreachable), and the executor dies with its
      parent.
    * Filesystem: only the system's ``/usr``, ``/etc`` (and the ``/bin``, ``/lib`` links) and the
      interpreter's own prefix are mounted, read-only; a private ``/tmp``, ``/dev`` and ``/dev/shm``;
      home directories, the project and every other host path are not there. The work directory,
      ``/tmp`` and ``/dev/shm`` are tmpfs mounts of ``workdir_mb`` each (a full disk stays inside).
    * Every run is a fresh child in its own session/process group with rlimits (CPU, address space,
      NPROC, FSIZE, NOFILE), a wall-clock timeout and an output cap; its process group is killed
      afterwards. Its work directory is a private temporary directory, wiped on reset.
    * When the process runs as root, children also drop to per-session unprivileged uids (as in
      Docker), so they cannot signal the executor, read root-only files, or survive a uid sweep.

``local`` does not isolate:
    * No cgroup: no memory, CPU-share or pids limit across a session (only the per-process rlimits).
      Without root there are no uids to drop to, so leftovers
      that left the process group (``setsid``) are not swept by uid.
    * The kernel is shared (as with Docker's default runtime).

``local-unisolated`` (explicit opt-in, never chosen by ``auto``) isolates nothing: code reaches the
network, the host's files and processes and writes where this user can. It keeps only the
rlimits, timeout and output cap: resource control for trusted code, not a security boundary.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from toolgym.errors import SandboxError
from toolgym.sandboxes.client import EXECUTOR_SOURCE
from toolgym.sandboxes.config import SandboxConfig
from toolgym.sandboxes.pool import ExecutorPool, HostHandle

log = logging.getLogger(__name__)


@functools.cache
def bwrap_problem() -> str | None:
    """Why bubblewrap cannot isolate the local executor here, or ``None`` when it can."""
    path = shutil.which("bwrap")
    if path is None:
        return "bwrap is not installed (apt-get install bubblewrap)"
    probe = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                           capture_output=True, timeout=10, check=False)
    if probe.returncode != 0:
        return f"bwrap cannot create namespaces here: {probe.stderr.decode(errors='replace').strip()}"
    return None


def bwrap_path() -> str | None:
    """The bubblewrap binary when it is installed and can create namespaces here."""
    return None if bwrap_problem() else shutil.which("bwrap")


def _system_mounts(python: str) -> list[str]:
    """bwrap arguments for a read-only view of the system: /usr, /etc, the merged-usr links, and
    the interpreter's prefix when it lives elsewhere. Nothing else of the host is visible."""
    args = ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    prefix = Path(os.path.realpath(python)).parent.parent
    if not any(prefix.is_relative_to(p) for p in ("/usr", "/bin", "/lib")):
        args += ["--ro-bind", str(prefix), str(prefix)]
    return args


def sandbox_python() -> str:
    """The interpreter the local executor runs: a system one whose stdlib every uid can read.

    Children drop to unprivileged uids, so an interpreter under a private home directory (pyenv,
    a root-owned venv) could not import modules there. ``TOOLGYM_SANDBOX_PYTHON`` overrides.
    """
    for candidate in (os.environ.get("TOOLGYM_SANDBOX_PYTHON"), "/usr/bin/python3", "/usr/local/bin/python3"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return sys.executable


class LocalHosts:
    """Starts executor processes on this machine: inside bubblewrap, or (``isolated=False``) bare."""

    def __init__(self, config: SandboxConfig, isolated: bool = True):
        self.config = config
        self.name = "local" if isolated else "local-unisolated"
        self.bwrap = None
        if isolated:
            problem = bwrap_problem()
            if problem:
                raise SandboxError(f"the local sandbox backend needs bubblewrap: {problem}; or use Docker "
                                   "(bash .ci/docker-up.sh), or sandbox.backend=local-unisolated for trusted code")
            self.bwrap = bwrap_path()
        else:
            log.warning("sandbox: backend local-unisolated: code runs with NO isolation (network, host files "
                        "and processes are reachable); use it for trusted code only")
        self.root = Path(tempfile.mkdtemp(prefix="toolgym-local-sandbox-"))
        self.root.chmod(0o711)  # sandbox uids may pass through to their work directory, not list it
        self.python = sandbox_python()
        self.uid_base = 300_000 + (os.getpid() % 2000) * 256
        log.info("sandbox: local backend (%s, %s)", "bubblewrap" if self.bwrap else "no bubblewrap",
                 "uid drop" if os.geteuid() == 0 else "no uid drop")

    @property
    def mode(self) -> str:
        return "bwrap" if self.bwrap else "process"

    def start_host(self, index: int) -> HostHandle:
        cfg = self.config
        host_dir = self.root / f"h{index}"
        work = host_dir / "work"
        work.mkdir(parents=True)
        for path in (host_dir, work):
            path.chmod(0o711)
        shutil.copyfile(EXECUTOR_SOURCE, host_dir / "executor.py")
        (host_dir / "executor.py").chmod(0o600)
        log_file = host_dir / "executor.log"
        log_file.touch(mode=0o600)
        sock = host_dir / "exec.sock"
        args = ["--socket", str(sock), "--workroot", str(work), "--uid-base", str(self.uid_base + index * 64),
                "--max-sessions", str(cfg.sessions_per_host), "--default-timeout", str(cfg.timeout_s),
                "--orphan-grace", str(cfg.orphan_grace_s)]
        if os.geteuid() != 0:
            args.append("--no-drop")  # inside bwrap's user namespace uid 0 is not root: no uids to drop to
        cmd = [self.python, "-I", "-S", str(host_dir / "executor.py"), *args]
        if self.bwrap:
            # A private /tmp; the host directory is bound back in, its parents made passable (0711).
            parents = [p for p in reversed(host_dir.parents) if p.is_relative_to("/tmp") and p != Path("/tmp")]
            dirs = [arg for p in parents for arg in ("--perms", "0711", "--dir", str(p))]
            cmd = [self.bwrap, *_system_mounts(self.python), "--dev", "/dev", "--proc", "/proc",
                   *self._tmpfs("/tmp", 0o1777), *self._tmpfs("/dev/shm", 0o1777),
                   "--mqueue", "/dev/mqueue", *dirs, "--bind", str(host_dir), str(host_dir),
                   *self._tmpfs(str(work), 0o711),
                   *self._unshare(), "--die-with-parent", "--new-session", *cmd]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
        try:
            with open(log_file, "wb") as log:  # the child keeps its own copy of the descriptor
                proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=log, start_new_session=True)
        except OSError as exc:
            raise SandboxError(f"could not start local executor: {exc}") from exc
        return HostHandle(host_id=f"local-{os.getpid()}-{index}", socket_path=str(sock),
                          data={"proc": proc, "dir": str(host_dir)})

    def _tmpfs(self, dest: str, mode: int) -> list[str]:
        """A size-capped tmpfs (``workdir_mb``, as Docker's ``/work`` and ``/tmp``) at ``dest``."""
        return ["--perms", f"{mode:04o}", "--size", str(self.config.workdir_mb << 20), "--tmpfs", dest]

    @staticmethod
    def _unshare() -> list[str]:
        # As root keep the real uids (no user namespace) so children can drop to unprivileged ones.
        if os.geteuid() == 0:
            return ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        return ["--unshare-all"]

    def stop_host(self, handle: HostHandle) -> None:
        proc: subprocess.Popen = handle.data["proc"]
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait(timeout=5)
        shutil.rmtree(handle.data["dir"], ignore_errors=True)

    def reap(self) -> int:
        """Local executors exit by themselves once their owner is gone (orphan timer, die-with-parent)."""
        return 0

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def open_local_pool(config: SandboxConfig, isolated: bool = True) -> ExecutorPool:
    """A pool of local executor processes (under bubblewrap unless ``isolated=False``)."""
    return ExecutorPool(config, LocalHosts(config, isolated))
