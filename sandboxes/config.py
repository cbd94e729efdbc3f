"""Configuration of the sandbox subsystem (one dataclass, defaults hardened)."""

from __future__ import annotations

from dataclasses import dataclass, field

from toolgym.errors import ConfigError

DEFAULT_IMAGE = "toolgym-sandbox:bookworm"
BACKENDS = ("auto", "docker", "local", "local-unisolated")
RUNTIMES = ("runc", "runsc")


@dataclass
class SandboxConfig:
    """How sandboxes are created and what each run may use.

    Args:
        backend: ``"docker"``, ``"local"`` (the executor under bubblewrap), ``"auto"`` (Docker when an
            engine answers, else ``local`` when bubblewrap works, else a :class:`SandboxError` that says
            how to get isolation) or ``"local-unisolated"``: the local executor with no namespaces at
            all (code reaches the network, the host's files and processes). Never chosen by ``auto``;
            only for trusted code on a machine with neither Docker nor bubblewrap.
        image: Docker image with ``python3`` (built offline by ``sandboxes/image/build.sh``).
        runtime: Docker runtime of the containers: ``"runc"`` (Docker's default) or ``"runsc"``
            (gVisor: a user-space kernel between the code and the host's; the engine must know the
            runtime, see ``.ci/docker-up.sh``).
        pool_size: Containers (or local executor processes) started ahead of demand.
        max_hosts: Upper bound on containers the pool may run at once (grows on demand).
        max_starting: Most hosts starting at once when demand exceeds the warm pool (a burst of
            acquires starts this many together instead of one after another).
        sessions_per_host: Episodes sharing one container (1 = one container per episode). More packs
            episodes, which then share the container's /tmp, loopback network, abstract unix sockets,
            disk, memory, CPU and pids: refused unless ``share_hosts`` says the code is trusted.
        share_hosts: Allow ``sessions_per_host > 1`` (trusted code only: benchmarks, your own tools).
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
        labels: Extra Docker labels on every container.

    Example:
        >>> SandboxConfig(memory_mb=256).memory_mb
        256
    """

    backend: str = "auto"  # auto | docker | local (a str so Hydra configs can set it)
    image: str = DEFAULT_IMAGE
    runtime: str = "runc"
    pool_size: int = 2
    max_hosts: int = 64
    max_starting: int = 16
    sessions_per_host: int = 1
    share_hosts: bool = False
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
    labels: dict[str, str] = field(default_factory=dict)

    def check(self) -> SandboxConfig:
        """Raise :class:`ConfigError` for a config that cannot run as asked; return it otherwise.

        Example:
            >>> SandboxConfig(sessions_per_host=4).check()
            Traceback (most recent call last):
            ...
            toolgym.errors.ConfigError: sessions_per_host=4 packs episodes into one host, where they share its /tmp, loopback network, abstract unix sockets and disk; keep sessions_per_host=1 for untrusted code, or set share_hosts=true if the code is trusted
        """
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown sandbox backend {self.backend!r}; use one of {', '.join(BACKENDS)}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"unknown sandbox runtime {self.runtime!r}; use one of {', '.join(RUNTIMES)}")
        if self.sessions_per_host < 1 or self.max_starting < 1 or self.max_hosts < 1:
            raise ConfigError("sessions_per_host, max_starting and max_hosts must be at least 1")
        if self.sessions_per_host > 1 and not self.share_hosts:
            raise ConfigError(f"sessions_per_host={self.sessions_per_host} packs episodes into one host, where they "
                              "share its /tmp, loopback network, abstract unix sockets and disk; keep "
                              "sessions_per_host=1 for untrusted code, or set share_hosts=true if the code is trusted")
        return self

    def run_limits(self, timeout_s: float) -> dict[str, int]:
        """The rlimits the executor applies to each run's process."""
        return {"cpu_s": int(timeout_s) + 2, "as_bytes": self.run_memory_mb << 20, "nproc": self.nproc,
                "fsize_bytes": self.file_size_mb << 20, "nofile": self.nofile}
