"""Sandbox benchmark: resident executor vs. a plain ``docker exec`` on the same warm containers.

Measures, in one run:
  * latency of a trivial isolated run (``print(1)`` in a fresh child forked from the executor's
    zygote, dropped to an unprivileged uid), sequential on one session: p50 / p99 with a short idle
    gap between calls (``--gap-ms``, as between a model's tool calls; the executor uses it to
    prepare the next child) and back to back;
  * the same for a cell of the stateful Python session (``repl``);
  * throughput: many sessions in parallel over the pool (isolated runs/s and REPL cells/s), and
    the CPU each isolated run costs (the containers' cgroup CPU time plus this process's, Docker
    backend): it depends much less than runs/s on what else the machine is running (contention
    still raises it), and ``cpus * 1000 / exec_cpu_ms`` is the rate the cores allow when nothing
    else runs;
  * the baseline: ``container.exec_run(["python3", "-c", "print(1)"])`` on the same containers.

Usage: python bench/sandbox.py [--json] [--hosts 4] [--sessions-per-host 4] [--runs 400]
Needs a Docker engine and the sandbox image (.ci/docker-up.sh); ``--backend local`` measures the
local fallback instead (no baseline then).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

from toolgym.sandboxes import SandboxConfig, open_sandbox_pool
from toolgym.sandboxes.protocol import RunStatus


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(sandbox, runs: int, mode: str, gap_s: float = 0.0) -> list[float]:  # noqa: ANN001
    """Sequential runs on one session; ``gap_s`` of idle time between calls (as between a model's
    tool calls, when the executor has prepared the next child) or none (back to back)."""
    times = []
    for _ in range(runs):
        if gap_s:
            time.sleep(gap_s)
        start = time.perf_counter()
        result = sandbox.run("print(1)", mode=mode)
        times.append(time.perf_counter() - start)
        if result.status is not RunStatus.OK or result.stdout != "1\n":
            raise SystemExit(f"bench run failed: {result}")
    return times


def _cgroup_cpu_ns(container_id: str) -> int | None:
    """CPU time a container has used (cgroup v1 or v2, either cgroup driver); None if unreadable."""
    v1 = f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage"
    try:
        with open(v1) as fh:
            return int(fh.read())
    except OSError:
        pass
    for v2 in (f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat",
               f"/sys/fs/cgroup/docker/{container_id}/cpu.stat"):
        try:
            with open(v2) as fh:
                for line in fh:
                    if line.startswith("usage_usec "):
                        return int(line.split()[1]) * 1000
        except OSError:
            continue
    return None


def cpu_clock(pool) -> float | None:  # noqa: ANN001
    """Seconds of CPU used so far by the pool's containers and this process (None if unknown)."""
    if pool.backend != "docker":
        return None
    total = 0
    for handle in pool.handles():
        used = _cgroup_cpu_ns(handle.data["container_id"])
        if used is None:
            return None
        total += used
    mine = os.times()
    return total / 1e9 + mine.user + mine.system


def throughput(sandboxes: list, seconds: float, mode: str = "python") -> tuple[float, int]:
    counts = [0] * len(sandboxes)
    stop = time.perf_counter() + seconds
    errors: list[str] = []

    def worker(i: int) -> None:
        while time.perf_counter() < stop:
            result = sandboxes[i].run("print(1)", mode=mode)
            if result.stdout != "1\n":
                errors.append(str(result))
                return
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(sandboxes))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise SystemExit(f"bench run failed: {errors[0]}")
    return sum(counts) / elapsed, sum(counts)


def baseline_exec_run(pool, runs: int) -> list[float]:  # noqa: ANN001
    import docker

    client = docker.from_env()
    handles = pool.handles()
    containers = [client.containers.get(h.data["container_id"]) for h in handles]
    times = []
    for i in range(runs):
        start = time.perf_counter()
        code, out = containers[i % len(containers)].exec_run(["python3", "-c", "print(1)"])
        times.append(time.perf_counter() - start)
        if code != 0 or out.strip() != b"1":
            raise SystemExit(f"baseline exec_run failed: {code} {out!r}")
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--backend", default="docker", choices=["docker", "local", "auto"])
    p.add_argument("--hosts", type=int, default=4)
    p.add_argument("--sessions-per-host", type=int, default=4)
    p.add_argument("--runs", type=int, default=400)
    p.add_argument("--baseline-runs", type=int, default=30)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--gap-ms", type=float, default=5.0, help="idle time between sequential calls")
    args = p.parse_args()

    cfg = SandboxConfig(backend=args.backend, pool_size=args.hosts, max_hosts=args.hosts,
                        sessions_per_host=args.sessions_per_host)
    pool = open_sandbox_pool(cfg)
    try:
        pool.wait_ready(args.hosts)
        sessions = [pool.acquire() for _ in range(args.hosts * args.sessions_per_host)]
        for sb in sessions:  # first run of each session forks its first prepared child
            sb.run("pass")
        lat = latency(sessions[0], args.runs, "python", args.gap_ms / 1000)
        b2b = latency(sessions[0], args.runs, "python")
        repl = latency(sessions[0], args.runs, "repl", args.gap_ms / 1000)
        cpu_before = cpu_clock(pool)
        rate, done = throughput(sessions, args.seconds)
        cpu_after = cpu_clock(pool)
        repl_rate, _ = throughput(sessions, args.seconds, mode="repl")
        base = baseline_exec_run(pool, args.baseline_runs) if pool.backend == "docker" else []
        for sb in sessions:
            sb.close()
    finally:
        pool.close()

    p50 = statistics.median(lat) * 1000
    measured = cpu_before is not None and cpu_after is not None and done > 0
    cpu_ms = (cpu_after - cpu_before) * 1000 / done if measured else None
    base_p50 = statistics.median(base) * 1000 if base else None
    report = {
        "backend": pool.backend, "cpus": os.cpu_count(), "hosts": args.hosts,
        "sessions": args.hosts * args.sessions_per_host, "runs": args.runs,
        "gap_ms": args.gap_ms, "p50_ms": round(p50, 3), "p99_ms": round(percentile(lat, 0.99) * 1000, 3),
        "back_to_back_p50_ms": round(statistics.median(b2b) * 1000, 3),
        "back_to_back_p99_ms": round(percentile(b2b, 0.99) * 1000, 3),
        "repl_p50_ms": round(statistics.median(repl) * 1000, 3),
        "repl_p99_ms": round(percentile(repl, 0.99) * 1000, 3),
        "exec_per_s": round(rate, 1), "repl_exec_per_s": round(repl_rate, 1),
        "exec_cpu_ms": round(cpu_ms, 3) if cpu_ms else None,
        "exec_per_s_cpu_bound": round(os.cpu_count() * 1000 / cpu_ms, 1) if cpu_ms else None,
        "baseline_exec_run_p50_ms": round(base_p50, 3) if base_p50 else None,
        "speedup_vs_exec_run": round(base_p50 / p50, 1) if base_p50 else None,
        "repl_speedup_vs_exec_run": round(base_p50 / (statistics.median(repl) * 1000), 1) if base_p50 else None,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>28}: {value}")


if __name__ == "__main__":
    sys.exit(main())
