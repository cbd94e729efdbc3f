"""Configuration of the sandbox subsystem (one dataclass, defaults hardened)."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_IMAGE = "toolgym-sandbox:bookworm"


@dataclass
class SandboxConfig:
    """How sandboxes are created and what each run may use.

    Args:
        backend: ``"docker"``, ``"local"`` or ``"auto"`` (Docker when an engine answers, else local).
        image: Docker image with ``python3`` (built offline by ``sandboxes/image/build.sh``).
        pool_size: Containers (or local executor processes) started ahead of demand.
        max_hosts: Upper bound on containers the pool may run at once (grows on demand).
        sessions_per_host: Episodes sharing one container (1 = one container per episode, the strongest
            isolation; more packs episodes, which then share the container's memory, CPU, pids and /tmp).
        memory_mb: Container memory limit (memory == memory+swap, so no swap).
        cpus: CPU quota of one container.
        pids: Process limit of one container (cgroup).
        run_memory_mb: Address-space rlimit of one run's process (a memory bomb fails there first).
        nproc: Processes per sandbox uid (RLIMIT_NPROC): bounds fork bombs below ``pids``.
        nofile: Open files per process.
        file_size_mb: Largest file a run may write (RLIMIT_FSIZE).
        workdir_mb: Size of the tmpfs work directory (and of /tmp).
        timeout_s: Default wall-clock limit of one run.
        grace_s: Extra time the host waits for the executor beyond a run's timeout before it declares
            the sandbox lost and replaces it.
        output_limit_bytes: Cap on stdout+stderr of one run; past it the run is killed (``output_truncated``).
        network: Give containers a network (off by default: ``network_mode="none"``).
        orphan_grace_s: The executor exits this long after its owner's last connection closed.
        local_use_bwrap: Local backend: wrap the executor in bubblewrap when it is installed.
        labels: Extra Docker labels on every container.

    Example:
        >>> SandboxConfig(memory_mb=256).memory_mb
        256
    """

    backend: str = "auto"  # auto | docker | local (a str so Hydra configs can set it)
    image: str = DEFAULT_IMAGE
    pool_size: int = 2
    max_hosts: int = 64
    sessions_per_host: int = 1
    memory_mb: int = 512
    cpus: float = 1.0
    pids: int = 256
    run_memory_mb: int = 384
    nproc: int = 64
    nofile: int = 256
    file_size_mb: int = 32
    workdir_mb: int = 64
    timeout_s: float = 10.0
    grace_s: float = 5.0
    output_limit_bytes: int = 1 << 20
    network: bool = False
    orphan_grace_s: float = 10.0
    local_use_bwrap: bool = True
    labels: dict[str, str] = field(default_factory=dict)

    def run_limits(self, timeout_s: float) -> dict[str, int]:
        """The rlimits the executor applies to each run's process."""
        return {"cpu_s": int(timeout_s) + 2, "as_bytes": self.run_memory_mb << 20, "nproc": self.nproc,
                "fsize_bytes": self.file_size_mb << 20, "nofile": self.nofile}
