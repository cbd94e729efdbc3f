"""Docker backend: each host is a hardened container running the resident executor.

What it isolates:
    * Network: ``network_mode="none"`` (no interface but loopback) unless ``network=True``.
    * Filesystem: read-only root; writable only a size-capped tmpfs work directory (``/work``), a
      size-capped ``/tmp`` and Docker's ``/dev/shm``. No host path is visible except the executor's
      socket directory, which is mode 0700 root, so sandboxed code (an unprivileged uid) cannot open it.
    * Privilege: ``cap_drop=ALL`` plus only what the executor needs to drop privileges and clean up
      (SETUID, SETGID, KILL, CHOWN, DAC_OVERRIDE, FOWNER); ``no-new-privileges``; every run's process
      runs as a per-session unprivileged uid with no capabilities.
    * Resources: memory == memory+swap limit, CPU quota, pids limit (cgroup); per-run rlimits
      (CPU, address space, NPROC, FSIZE, NOFILE); ``init=True`` reaps orphans and zombies.
    * Time and output: wall-clock timeout and output cap enforced by the executor, with a host-side
      deadline (timeout + grace) that replaces a container whose executor stops answering.
    * Leaks: containers carry owner labels; those of dead owners are reaped at start-up, the pool
      removes its own at close, and the executor exits (the container is auto-removed) soon after
      its owner's connections close, even when the owner was SIGKILLed.

    * Between episodes: reset kills every process of the session's uids, wipes ``/tmp``, ``/dev/shm``
      and ``/dev/mqueue`` and removes the uids' SysV IPC objects, and the run's result comes from
      ``waitpid``, the executor's timers and the cgroup's OOM counter, never from the code's own channels.
    * Per session (one per container by default): memory, CPU quota and pids are the container's
      cgroup, so one tenant's bomb cannot take another's memory or pids; CPU time on shared cores is
      bounded by ``cpus`` but not reserved (see below).
    * ``runtime="runsc"`` (gVisor, registered by ``.ci/docker-up.sh``) puts a user-space kernel between
      the code and the host kernel. On these machines it runs on the ptrace platform (no KVM; this
      runsc release has no systrap) with ``--network=none``. Its kernel has no ``/proc/sysvipc`` and no
      ``pidfd_open``, so each child gets a private IPC namespace instead and exits are found through
      SIGCHLD. Its pids cgroup counts host threads, so the container gets a looser one and processes
      are bounded per uid by ``nproc`` (see ``_host_pids``). Runs cost ~50 ms instead of ~1 ms.

What it does not isolate:
    * The kernel with the default runtime (runc): containers share the host kernel; a kernel exploit
      escapes. Use ``runtime="runsc"`` for a second kernel.
    * With ``sessions_per_host > 1`` (only with ``share_hosts=True``), packed episodes share the
      container's memory, CPU, pids, tmpfs quotas, loopback and abstract sockets (their files and
      processes are still separated by uid): for trusted code only.
    * Timing side channels and CPU contention between containers on the same cores.
    * The Docker daemon must share this machine's filesystem (the executor socket is a bind mount).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
import uuid
from pathlib import Path

from toolgym.errors import SandboxError
from toolgym.sandboxes.client import EXECUTOR_SOURCE
from toolgym.sandboxes.config import SandboxConfig
from toolgym.sandboxes.pool import ExecutorPool, HostHandle

log = logging.getLogger(__name__)

LABEL = "toolgym.sandbox"
CAPS = ["SETUID", "SETGID", "KILL", "CHOWN", "DAC_OVERRIDE", "FOWNER"]
SOCKET_DIR_IN_CONTAINER = "/run/toolgym"


def docker_client(timeout: float = 5.0):  # noqa: ANN201 (docker is imported lazily)
    """A docker-py client, or ``None`` when no engine answers."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception:  # no engine, no socket, no permission: all mean "not available"
        return None


def _proc_start_time(pid: int) -> str:
    """Start time of a process in clock ticks since boot (tells a live owner from a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner_alive(pid: int, start: str) -> bool:
    """Whether the process that created a container still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not start or _proc_start_time(pid) == start


class DockerHosts:
    """Starts, stops and reaps sandbox containers for one pool."""

    name = "docker"

    def __init__(self, config: SandboxConfig, client=None):  # noqa: ANN001
        self.config = config
        self.client = client or docker_client()
        if self.client is None:
            raise SandboxError("no Docker engine answers (is dockerd running? see .ci/docker-up.sh)")
        try:
            self.client.images.get(config.image)
        except Exception as exc:
            raise SandboxError(f"sandbox image {config.image!r} missing: build it with "
                               f"sandboxes/image/build.sh ({exc})") from exc
        self.pool_id = uuid.uuid4().hex[:8]
        self.owner_pid = os.getpid()
        self.owner_start = _proc_start_time(self.owner_pid)
        self.hostname = socket.gethostname()
        self._check_runtime()
        self.run_root = private_run_root()
        # Distinct uid blocks per container: RLIMIT_NPROC counts per uid across the whole machine.
        self._uid_lock = threading.Lock()
        self._uid_blocks = set()

    def _check_runtime(self) -> None:
        runtime = self.config.runtime
        if runtime == "runc":
            return
        try:
            known = sorted((self.client.info().get("Runtimes") or {}).keys())
        except Exception as exc:
            raise SandboxError(f"could not ask the Docker engine for its runtimes: {exc}") from exc
        if runtime not in known:
            raise SandboxError(f"sandbox runtime {runtime!r} is not registered with the Docker engine (it knows "
                               f"{', '.join(known) or 'none'}): run `bash .ci/docker-up.sh` as root (installs gVisor's "
                               "runsc and registers it in /etc/docker/daemon.json), or use runtime=runc")

    def _labels(self) -> dict[str, str]:
        return {LABEL: "1", "toolgym.owner_pid": str(self.owner_pid), "toolgym.owner_start": self.owner_start,
                "toolgym.owner_host": self.hostname, "toolgym.pool": self.pool_id, **self.config.labels}

    def _uid_base(self) -> int:
        with self._uid_lock:
            block = (self.owner_pid * 7919 + len(self._uid_blocks)) % 4000
            while block in self._uid_blocks:
                block = (block + 1) % 4000
            self._uid_blocks.add(block)
        return 200_000 + block * 256

    def start_host(self, index: int) -> HostHandle:
        from docker.types import Ulimit

        cfg = self.config
        name = f"toolgym-sbx-{self.pool_id}-{index}"
        run_dir = self.run_root / name
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(mode=0o700)
        shutil.copyfile(EXECUTOR_SOURCE, run_dir / "executor.py")
        uid_base = self._uid_base()
        command = ["python3", "-I", "-S", f"{SOCKET_DIR_IN_CONTAINER}/executor.py",
                   "--socket", f"{SOCKET_DIR_IN_CONTAINER}/exec.sock", "--workroot", "/work",
                   "--uid-base", str(uid_base), "--max-sessions", str(cfg.sessions_per_host),
                   "--default-timeout", str(cfg.timeout_s), "--orphan-grace", str(cfg.orphan_grace_s),
                   "--socket-owner", str(os.getuid())]
        tmpfs_opts = f"size={cfg.workdir_mb}m,nosuid,nodev"
        try:
            container = self.client.containers.run(
                cfg.image, command, name=name, detach=True, labels=self._labels(),
                network_mode="bridge" if cfg.network else "none", read_only=True,
                tmpfs={"/work": f"{tmpfs_opts},mode=755", "/tmp": f"{tmpfs_opts},mode=1777"},
                mem_limit=f"{cfg.memory_mb}m", memswap_limit=f"{cfg.memory_mb}m",
                nano_cpus=int(cfg.cpus * 1e9), pids_limit=_host_pids(cfg),
                cap_drop=["ALL"], cap_add=CAPS, security_opt=["no-new-privileges"], init=True,
                ulimits=[Ulimit(name="nofile", soft=4096, hard=4096), Ulimit(name="core", soft=0, hard=0)],
                volumes={str(run_dir): {"bind": SOCKET_DIR_IN_CONTAINER, "mode": "rw"}},
                working_dir="/work", user="0:0", environment={}, auto_remove=True, shm_size="16m",
                runtime=cfg.runtime,
            )
        except Exception as exc:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise SandboxError(f"could not start sandbox container: {exc}") from exc
        return HostHandle(host_id=name, socket_path=str(run_dir / "exec.sock"),
                          data={"container_id": container.id, "run_dir": str(run_dir), "uid_base": uid_base})

    def stop_host(self, handle: HostHandle) -> None:
        cid = handle.data["container_id"]
        try:
            self.client.api.remove_container(cid, force=True)
        except Exception as exc:
            if "No such container" not in str(exc) and "is already in progress" not in str(exc):
                log.warning("sandbox: removing %s: %s", handle.host_id, exc)
        # auto_remove and force-remove race; wait until the engine has really let go of it.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                self.client.api.inspect_container(cid)
            except Exception:
                break
            time.sleep(0.05)
        shutil.rmtree(handle.data["run_dir"], ignore_errors=True)
        with self._uid_lock:
            self._uid_blocks.discard((handle.data["uid_base"] - 200_000) // 256)

    def reap(self) -> int:
        """Remove sandbox containers whose owner process on this machine is dead."""
        return reap_orphans(self.client, self.hostname, self.run_root)

    def close(self) -> None:
        """Nothing pool-wide to release: each container's socket directory goes with it."""


def _host_pids(cfg: SandboxConfig) -> int:
    """The container's pids cgroup limit. Under gVisor it counts the sandbox's host threads (the
    sentry's and, on the ptrace platform, a stub per guest thread), and reaching it ends the whole
    container rather than failing a fork: 40 guest processes already end a container limited to 128.
    There the guest's processes are bounded per uid by RLIMIT_NPROC (``nproc``) and this limit is only
    the host's backstop."""
    return cfg.pids if cfg.runtime == "runc" else 4 * cfg.pids + 512


def private_run_root() -> Path:
    """This uid's directory of executor sockets under the temp dir, created if missing and checked.

    Another local user could pre-create the well-known path (or a symlink there) and so own the sockets
    our executors listen on; it must be a real directory, owned by us, with no group or other access.
    """
    root = Path(tempfile.gettempdir()) / f"toolgym-sandbox-{os.getuid()}"
    try:
        root.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(root)
    except OSError as exc:
        raise SandboxError(f"cannot create the sandbox socket directory {root}: {exc}") from exc
    wrong = []
    if stat.S_ISLNK(st.st_mode):
        wrong.append("is a symlink")
    elif not stat.S_ISDIR(st.st_mode):
        wrong.append("is not a directory")
    else:
        if st.st_uid != os.getuid():
            wrong.append(f"is owned by uid {st.st_uid}, not by us (uid {os.getuid()})")
        if st.st_mode & 0o077:
            wrong.append(f"has mode {stat.S_IMODE(st.st_mode):04o} (group/other may enter it; must be 0700)")
    if wrong:
        raise SandboxError(f"refusing the sandbox socket directory {root}: it {' and '.join(wrong)}; someone else "
                           f"may have created it to reach the executors' sockets. Remove it (`rm -rf {root}`) "
                           "and retry")
    return root


def reap_orphans(client, hostname: str | None = None, run_root: Path | None = None) -> int:  # noqa: ANN001
    """Remove every toolgym sandbox container of this machine whose owner process is gone."""
    hostname = hostname or socket.gethostname()
    removed = 0
    # The low-level listing is one request; the high-level one re-fetches each container and races
    # with containers that remove themselves meanwhile.
    for info in client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
        labels = info.get("Labels") or {}
        if labels.get("toolgym.owner_host") != hostname:
            continue
        try:
            pid = int(labels.get("toolgym.owner_pid", "0"))
        except ValueError:
            pid = 0
        if pid and owner_alive(pid, labels.get("toolgym.owner_start", "")):
            continue
        name = (info.get("Names") or ["/?"])[0].lstrip("/")
        try:
            client.api.remove_container(info["Id"], force=True)
            removed += 1
        except Exception as exc:
            log.debug("sandbox: reaping %s: %s", name, exc)
        if run_root is not None:
            shutil.rmtree(run_root / name, ignore_errors=True)
    if run_root is not None:
        _remove_stale_run_dirs(client, run_root)
    return removed


def _remove_stale_run_dirs(client, run_root: Path, min_age_s: float = 120.0) -> None:  # noqa: ANN001
    """Socket directories of containers that removed themselves (orphan exit, auto-remove)."""
    try:
        alive = {n.lstrip("/") for info in client.api.containers(all=True, filters={"label": f"{LABEL}=1"})
                 for n in info.get("Names") or []}
        entries = list(run_root.iterdir())
    except Exception:
        return
    now = time.time()
    for entry in entries:
        try:
            old = now - entry.stat().st_mtime > min_age_s  # a pool elsewhere may be creating it right now
        except OSError:
            continue
        if entry.name.startswith("toolgym-sbx-") and entry.name not in alive and old:
            shutil.rmtree(entry, ignore_errors=True)


def open_docker_pool(config: SandboxConfig) -> ExecutorPool:
    """A pool of hardened containers (raises :class:`SandboxError` when Docker is unusable)."""
    return ExecutorPool(config, DockerHosts(config))
