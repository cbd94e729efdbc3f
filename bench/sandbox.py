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
  * the baseline: ``container.exec_run(["python3", "-c", "print(1)"])`` on the same containers;
  * a burst (``--burst N``, default 64; 0 skips): a cold pool with the default config, N threads
    calling ``acquire()`` at once, each then running ``print(1)``; the acquire waits (p50 / p99 /
    max; goal p50 <= 1000 ms for 64), against the same burst with ``max_starting=1`` (hosts started
    one after another, as before concurrent starts) in the same run, plus what a start costs: the
    backend's part (Docker create + start), the executor's (until it answers a ping) and how busy
    the machine's cores were during the burst.

Usage: python bench/sandbox.py [--json] [--hosts 4] [--sessions-per-host 4] [--runs 400]
[--runtime runc|runsc] [--burst 64]
Needs a Docker engine and the sandbox image (.ci/docker-up.sh); ``--backend local`` measures the
local fallback instead (no baseline then). ``--runtime runsc`` runs every container under gVisor
(the engine must know the runtime: ``docker info | grep Runtimes``).
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


def _cpu_ticks() -> tuple[int, int, int]:
    """(busy, kernel, total) jiffies of all cores since boot, from /proc/stat (zeros where unreadable)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:8]]
    except (OSError, ValueError):
        return 0, 0, 0
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, fields[2] + fields[5] + fields[6], sum(fields)  # kernel: system + irq + softirq


def _daemon_cpu_s() -> dict[str, float]:
    """CPU seconds used so far by the container engine's processes that outlive a start (dockerd,
    containerd, the per-container shims), by name; runc itself exits too soon to be seen here."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {"dockerd": 0.0, "containerd": 0.0, "containerd-shim": 0.0}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                head, rest = fh.read().rsplit(")", 1)
        except OSError:
            continue
        name = head.split("(", 1)[1]
        if name in used:
            fields = rest.split()
            used[name] += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return used


def _containers_cpu_s(pool) -> float:  # noqa: ANN001
    """CPU seconds the pool's containers used (executor start-up and runs), 0 where unreadable."""
    if pool.backend != "docker":
        return 0.0
    return sum((_cgroup_cpu_ns(h.data["container_id"]) or 0) for h in pool.handles()) / 1e9


def burst(n: int, backend: str, runtime: str, max_starting: int | None = None) -> dict[str, float]:
    """``n`` threads acquire at once on a cold default pool and hold their sessions (as episodes do)
    until all have one; their waits (ms) and where the CPU went meanwhile."""
    cfg = SandboxConfig(backend=backend, runtime=runtime)
    if max_starting is not None:
        cfg.max_starting = max_starting
    waits: list[float] = []
    errors: list[str] = []
    go, held = threading.Barrier(n + 1), threading.Barrier(n + 1, timeout=900)
    lock = threading.Lock()

    def episode() -> None:
        go.wait()
        start = time.perf_counter()
        try:
            sb = pool.acquire(timeout=600)
        except Exception as exc:  # reported below: the bench fails rather than skewing the figures
            errors.append(str(exc))
            held.abort()
            return
        with lock:
            waits.append(time.perf_counter() - start)
        result = sb.run("print(1)")
        if result.stdout != "1\n":
            errors.append(str(result))
        try:
            held.wait()
        finally:
            sb.close()

    pool = open_sandbox_pool(cfg)  # cold: the default pool_size spares are only just starting
    try:
        threads = [threading.Thread(target=episode) for _ in range(n)]
        for t in threads:
            t.start()
        busy0, kernel0, total0 = _cpu_ticks()
        daemons0, me0 = _daemon_cpu_s(), os.times()
        began = time.perf_counter()
        go.wait()
        try:
            held.wait()
        except threading.BrokenBarrierError:
            pass
        wall = time.perf_counter() - began
        busy1, kernel1, total1 = _cpu_ticks()
        daemons1, me1 = _daemon_cpu_s(), os.times()
        containers, stats = _containers_cpu_s(pool), pool.stats()
        for t in threads:
            t.join()
    finally:
        pool.close()
    if errors:
        raise SystemExit(f"burst failed ({len(errors)} of {n}): {errors[0]}")
    cores = os.cpu_count() or 1
    return {"p50": statistics.median(waits) * 1000, "p99": percentile(waits, 0.99) * 1000,
            "max": max(waits) * 1000, "wall_s": wall, "hosts": stats["hosts_started"],
            "cpu_busy": (busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan"),
            "cpu_s": (busy1 - busy0) / (total1 - total0) * cores * wall if total1 > total0 else float("nan"),
            "kernel_share": (kernel1 - kernel0) / (busy1 - busy0) if busy1 > busy0 else float("nan"),
            **{f"{name.replace('-', '_')}_cpu_s": daemons1[name] - daemons0[name] for name in daemons1},
            "bench_cpu_s": (me1.user + me1.system) - (me0.user + me0.system), "containers_cpu_s": containers,
            "start_backend_p50_ms": stats["start_backend_p50_ms"], "start_ready_p50_ms": stats["start_ready_p50_ms"]}


def burst_report(n: int, backend: str, runtime: str) -> dict[str, object]:
    """The burst with concurrent starts (default max_starting) and, as the baseline, one at a time."""
    new = burst(n, backend, runtime)
    old = burst(n, backend, runtime, max_starting=1)
    key = f"burst{n}"
    report: dict[str, object] = {
        f"acquire_p50_ms_{key}": round(new["p50"], 1), f"acquire_p99_ms_{key}": round(new["p99"], 1),
        f"acquire_max_ms_{key}": round(new["max"], 1), f"{key}_goal_p50_ms": 1000,
        f"acquire_p50_ms_{key}_serial": round(old["p50"], 1), f"acquire_max_ms_{key}_serial": round(old["max"], 1),
        f"{key}_p50_speedup_vs_serial": round(old["p50"] / new["p50"], 1) if new["p50"] else None,
    }
    # Where a start's time and CPU go: Docker's create + start call, the executor until it answers,
    # and per host the CPU of the daemons, the containers, this process and all cores (other users too).
    for name, res in ((key, new), (f"{key}_serial", old)):
        hosts = max(res["hosts"], 1)
        report.update({
            f"{name}_wall_s": round(res["wall_s"], 2), f"{name}_hosts": res["hosts"],
            f"{name}_cpu_busy": round(res["cpu_busy"], 3), f"{name}_kernel_share": round(res["kernel_share"], 3),
            f"{name}_start_backend_p50_ms": res["start_backend_p50_ms"],
            f"{name}_start_ready_p50_ms": res["start_ready_p50_ms"],
            **{f"{name}_{part}_ms_per_host": round(res[f"{part}_s"] * 1000 / hosts, 1)
               for part in ("cpu", "dockerd_cpu", "containerd_cpu", "containerd_shim_cpu", "containers_cpu",
                            "bench_cpu")},
        })
    return report


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
    p.add_argument("--runtime", default="runc", choices=["runc", "runsc"], help="Docker runtime (runsc: gVisor)")
    p.add_argument("--burst", type=int, default=64, help="threads acquiring at once on a cold pool (0: skip)")
    args = p.parse_args()

    # Packing sessions into hosts is for trusted code only; this benchmark's code is trusted.
    cfg = SandboxConfig(backend=args.backend, runtime=args.runtime, pool_size=args.hosts, max_hosts=args.hosts,
                        sessions_per_host=args.sessions_per_host, share_hosts=args.sessions_per_host > 1)
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
        "backend": pool.backend, "runtime": args.runtime, "cpus": os.cpu_count(), "hosts": args.hosts,
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
    if args.burst > 0:  # after the steady-state figures, so its 2 x N container starts do not disturb them
        report.update(burst_report(args.burst, args.backend, args.runtime))
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>28}: {value}")


if __name__ == "__main__":
    sys.exit(main())
