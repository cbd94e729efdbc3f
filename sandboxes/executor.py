"""Resident sandbox executor: one long-lived process per sandbox host, stdlib only.

It runs inside each sandbox container (or under the local backend) as the host's only entry point.
The host connects to a unix socket and sends length-prefixed JSON frames (4-byte big-endian length,
then UTF-8 JSON). A connection is a *session*: it owns a slot (a work directory and two unprivileged
uids: one for stateless runs, one for the stateful Python REPL) until it resets or disconnects.

Every stateless run gets a fresh child forked from a small, primed, otherwise idle interpreter
running this module (the zygote, see :class:`Zygote`), prepared ahead of demand: it has already
started its own session/process group, raised its OOM score, dropped to the slot's uid and entered
the work directory, and waits for its request. It then kills every other process of its uid
(whatever earlier runs left), sets rlimits (CPU, AS, NPROC, FSIZE, NOFILE), runs the code, kills
every other process of its uid again (``kill(-1)`` as that uid reaches ``setsid`` escapes too)
and exits. The executor enforces the wall-clock timeout and the output cap; on a
kill it SIGKILLs the child's process group and sweeps the uid itself. The stateful Python session
is one long-lived child per session (uid of its own) that executes successive cells; it is stopped
(SIGSTOP) between cells, so nothing it started runs while no cell does.

Who decides a result: a run's exit code or signal comes from ``waitpid`` (the zygote's or the
executor's), timeout and output truncation from the executor's own timers and counters, an OOM
kill from the container's cgroup counter. Nothing the code can write decides them: a run child's
report on fd 3 is read only after it exited, capped, and only tells a failing run's MemoryError
(``oom``) from another failure. A REPL cell is over when its process has *stopped* itself after
reporting, not when a report arrives, so a forged report cannot end a cell that keeps running;
whether the cell raised is the session's own report (a cell can claim only what it could also
achieve by catching its own exception). Every channel a child can write is length-capped; a bad
frame ends that run or session with a typed result and is not logged.

The executor exits by itself when its host-side owner goes away (all connections closed and none
new within ``--orphan-grace`` seconds), so a SIGKILLed parent leaves no running sandbox behind.

Run: ``python3 -I -S executor.py --socket PATH [--uid-base N] [--no-drop] [--workroot DIR]``.
"""

from __future__ import annotations

import _signal
import _socket
import base64
import builtins
import fcntl
import gc
import marshal
import os
import resource
import signal
import struct
import sys
import time
import traceback

# Only the executor needs argparse, heapq, json, selectors, shutil, socket and stat: they are
# imported at the bottom, when this file runs as the executor. The zygote imports it as a module
# without them, because every fork and exit pays for the zygote's size (see Zygote).

PROTOCOL_VERSION = 2
MAX_FRAME = 256 * 1024 * 1024  # host <-> executor (the host is trusted; replies carry files)
MAX_REPORT = 1024  # a child's report to the executor: a few small fields
_LEN = struct.Struct(">I")
# Standard streams for run children, built once by the zygote over fds 0-2 (see _prime_zygote).
_CHILD_STDIO: tuple = ()


# ----------------------------------------------------------------------------------------- framing
def send_frame(sock: socket.socket, obj: dict) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    sock.sendall(_LEN.pack(len(data)) + data)


def pop_frames(buf: bytearray, limit: int = MAX_FRAME) -> list:
    """Remove and return every complete frame at the head of ``buf`` (``ValueError`` past ``limit``)."""
    out = []
    while len(buf) >= 4:
        (n,) = _LEN.unpack_from(buf)
        if n > limit:
            raise ValueError("frame too large")
        if len(buf) < 4 + n:
            break
        out.append(json.loads(bytes(buf[4:4 + n])))
        del buf[:4 + n]
    return out


# ------------------------------------------------------------------------------------- child side
def _set_limits(limits: dict) -> None:
    pairs = (("cpu_s", resource.RLIMIT_CPU), ("as_bytes", resource.RLIMIT_AS),
             ("nproc", resource.RLIMIT_NPROC), ("fsize_bytes", resource.RLIMIT_FSIZE),
             ("nofile", resource.RLIMIT_NOFILE))
    for key, which in pairs:
        value = limits.get(key)
        if value:
            try:
                resource.setrlimit(which, (int(value), int(value)))
            except (ValueError, OSError):
                pass
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _enter_child(spec: dict, fds: tuple, keep: tuple) -> tuple:
    """Common set-up of a forked child: session, stdio, uid, cwd. Runs as root until the drop.

    The descriptors in ``keep`` are moved to 3, 4, ... and every other one is closed; their new
    numbers are returned. Kept cheap (raw syscalls): it runs on every request.
    """
    stdin_fd, out_w, err_w = fds
    os.setsid()
    os.dup2(stdin_fd, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    # Copy each kept fd above 3..3+len(keep) first (so placing one cannot close another), then into
    # place; the copies go with the rest. Plain loops: each comprehension is one more object the
    # child touches, and touching costs a page copy here.
    first_free = 3 + len(keep)
    moved = []
    for fd in keep:
        moved.append(fcntl.fcntl(fd, fcntl.F_DUPFD, first_free))
    kept = []
    for fd in moved:
        os.dup2(fd, 3 + len(kept))
        kept.append(3 + len(kept))
    os.closerange(first_free, 1 << 20)
    # Undo what the executor or the zygote set up for themselves. (_signal: the signal module's
    # wrappers convert to and from enums, which costs more than the system calls.)
    for sig in (signal.SIGTERM, signal.SIGCHLD):
        _signal.signal(sig, _signal.SIG_DFL)
    _signal.set_wakeup_fd(-1)  # the executor's wakeup pipe is closed below; its number may be reused
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
    gc.enable()
    try:
        fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        os.write(fd, b"1000")
        os.close(fd)
    except OSError:
        pass
    if spec.get("drop"):
        os.setgroups([spec["gid"]])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
        if spec.get("private_ipc"):
            private_ipc(spec["uid"], spec["gid"])
    os.umask(0o007)
    os.chdir(spec["cwd"])
    os.environ["HOME"] = spec["cwd"]
    return tuple(kept)


def private_ipc(uid: int, gid: int) -> None:
    """Give this process a SysV IPC namespace of its own (inside a user namespace mapping only its own
    uid and gid, so ids look unchanged): its IPC objects die with it. Used where the executor cannot
    list IPC objects to remove them (gVisor has no /proc/sysvipc) and an unprivileged process may
    create user namespaces (gVisor allows it; Docker's runc seccomp profile does not)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000 | 0x08000000) != 0:  # CLONE_NEWUSER | CLONE_NEWIPC
        os._exit(126)  # refused: never run code whose IPC objects would outlive the episode
    libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: setuid left /proc/self root's, so the maps could not be written
    for name, data in (("setgroups", b"deny"), ("uid_map", b"%d %d 1" % (uid, uid)),
                       ("gid_map", b"%d %d 1" % (gid, gid))):
        try:
            fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
        except FileNotFoundError:  # gVisor has no /proc/self/setgroups (nor setgroups to deny)
            continue
        os.write(fd, data)
        os.close(fd)
    # The new user namespace gave this process every capability inside it; gVisor then exempts it from
    # RLIMIT_NPROC (and a fork bomb would reach the container's pids limit, which ends the container).
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    if libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:  # effective, permitted, inheritable: none
        os._exit(126)


def _request_frame(obj: dict) -> bytes:
    """A request for a prepared child. The executor writes it before any user code runs in that
    child, so it is trusted and can use marshal (C-fast, no parsing code for the child to warm)."""
    data = marshal.dumps(obj)
    return _LEN.pack(len(data)) + data


def _read_request(fd: int) -> dict:
    """Blocking read of the request a prepared child waits for (see :func:`_request_frame`)."""
    buf = b""
    while len(buf) < 4 or len(buf) < 4 + _LEN.unpack_from(buf)[0]:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            os._exit(0)  # the executor went away before handing over work
        buf += chunk
    return marshal.loads(buf[4:])


def _frame(obj: dict) -> bytes:
    data = json.dumps(obj).encode()
    return _LEN.pack(len(data)) + data


def _status_frame(code: int, kind: str | None) -> bytes:
    """A child's final report, as :func:`_frame` would encode it; formatted directly because json's
    encoder is a lot of code for a child to touch (and copy) just before it exits."""
    data = b'{"exit": %d, "kind": %s}' % (code, b"null" if kind is None else b'"%s"' % kind.encode())
    return _LEN.pack(len(data)) + data


def _write_files(files: dict) -> None:
    for path, b64 in (files or {}).items():
        full = os.path.join(os.getcwd(), path)
        os.makedirs(os.path.dirname(full) or ".", exist_ok=True)
        with open(full, "wb") as fh:
            fh.write(base64.b64decode(b64))


def _open_stdio() -> tuple:
    return (open(0, encoding="utf-8", errors="replace", closefd=False),
            open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False),
            open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False))


def _fresh_stdio() -> None:
    """Point sys.std* at fds 0-2: the zygote's prebuilt, never-used streams when there are any."""
    sys.stdin, sys.stdout, sys.stderr = _CHILD_STDIO or _open_stdio()


def _run_cell(code: str, glb: dict, filename: str) -> tuple:
    """Execute one code cell; return (exit_code, error_kind)."""
    try:
        exec(compile(code, filename, "exec"), glb)  # the sandbox's purpose: run untrusted code in a jail
        return 0, None
    except SystemExit as exc:
        if exc.code is None or exc.code == 0:
            return 0, None
        if isinstance(exc.code, int):
            return exc.code, None
        print(exc.code, file=sys.stderr)
        return 1, None
    except MemoryError:
        return 1, "oom"
    except BaseException as exc:
        # Drop this function's own frame: the model should see only its code in the traceback.
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        return 1, "exception"
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


def _kill_uid_others(spec: dict) -> None:
    """Kill every other process of this uid (kill(-1) reaches all of them, but not the caller).

    Only once the uid is really dropped: as root, kill(-1) would take the whole container down.
    """
    if spec.get("drop") and os.getuid() == spec["uid"]:
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass


def _sweep_self(spec: dict) -> None:
    """Kill every other process of this uid, then reap our own children so no zombies of this run
    stay behind holding the uid's process count."""
    _kill_uid_others(spec)
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.001)


_PRIME_CELLS = (
    "import math\n"
    "def f(n):\n    return [i * i for i in range(n)]\n"
    "d = {'a': 1, 'b': [1.5, None, True]}\n"
    "print(f'{sum(f(10))} {math.sqrt(2):.3f}', d, *sorted(d), sep=', ', end='')\n"
    "try:\n    1 / 0\nexcept ZeroDivisionError as exc:\n    str(exc)\n",
    "import sys\nsys.stderr.write('x')\nraise ValueError('primed')\n",
)


def _prime_zygote() -> None:
    """Do, once in the zygote, the first-time work of a run child: build its standard streams and
    warm the compiler, codecs, marshal and traceback printing (lazily built state, caches,
    allocator pools). Otherwise every child redoes that work, and after fork it also copies every
    page it writes: a cold child spends about three times the CPU of a primed one.

    The streams are built over pipes on fds 0-2 (so they know they are not seekable, like the
    pipes a child gets) and are flushed empty before the real fds are put back.
    """
    global _CHILD_STDIO
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    real = (sys.stdin, sys.stdout, sys.stderr)
    r, w = os.pipe()
    os.set_blocking(w, False)  # primed output is small; never block the zygote on it
    try:
        for fd, src in ((0, r), (1, w), (2, w)):
            os.dup2(src, fd)
        _CHILD_STDIO = _open_stdio()
        # Several times: CPython specializes a function's bytecode on its eighth call or so, and
        # until then each call writes to the code object (a page copy in every child).
        for _ in range(10):
            _fresh_stdio()
            req_r, req_w = os.pipe()
            os.write(req_w, _request_frame({"mode": "python", "code": "", "files": None, "limits": {}}))
            _read_request(req_r)
            os.close(req_r)
            os.close(req_w)
            _write_files(None)
            for cell in _PRIME_CELLS:
                _run_cell(cell, {"__name__": "__main__", "__builtins__": builtins}, "<sandbox>")
            _status_frame(1, "oom")
            os.environ["HOME"] = os.environ.get("HOME", "/")
            _sweep_self({})  # the zygote has no children yet: returns at once
            os.read(r, 1 << 16)  # what the cells printed
        sys.argv = ["-c"]  # what every run child shows its code
    except Exception:
        _CHILD_STDIO = ()  # children build their own streams
    finally:
        for stream in _CHILD_STDIO:
            try:
                stream.flush()
            except (OSError, ValueError):
                _CHILD_STDIO = ()
        sys.stdin, sys.stdout, sys.stderr = real
        for fd, src in enumerate(saved):
            os.dup2(src, fd)
            os.close(src)
        os.close(r)
        os.close(w)


def child_run(spec: dict, fds: tuple, status_w: int, cmd_r: int = -1) -> None:
    """Body of a stateless run child (python or shell). Never returns.

    With ``cmd_r`` the child is prepared ahead of demand: it enters the sandbox first and then
    waits for the request on ``cmd_r``, so a request only pays for running the code.
    """
    code, kind = 1, "exception"
    try:
        if cmd_r >= 0:
            status_w, cmd_r = _enter_child(spec, fds, (status_w, cmd_r))
        else:
            (status_w,) = _enter_child(spec, fds, (status_w,))
        _fresh_stdio()  # cheap for a shell run too; a prepared child does it off the request's path
        sys.argv = ["-c"]
        sys.path.insert(0, spec["cwd"])
        if cmd_r >= 0:
            # Copy the compiler's first pages while idle: about a tenth off the request's latency,
            # for a few percent more CPU per run (a full print() here would cost three times that).
            compile("print(end='')", "<sandbox>", "exec")
            spec.update(_read_request(cmd_r))
            os.close(cmd_r)
        # Processes an earlier run of this uid left behind die before this run's code starts, even
        # if that run's own final sweep never ran (its code can forge its status report). Only now:
        # while a prepared child waits, a file operation of its session may run as the same uid.
        _kill_uid_others(spec)
        _set_limits(spec.get("limits") or {})
        _write_files(spec.get("files"))
        if spec["mode"] == "shell":
            pid = os.fork()
            if pid == 0:
                for sig in (signal.SIGPIPE, signal.SIGINT, signal.SIGXFSZ):
                    signal.signal(sig, signal.SIG_DFL)
                os.execve("/bin/sh", ["/bin/sh", "-c", spec["code"]], dict(os.environ))
            _, st = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(st)
            kind = None
        else:
            glb = {"__name__": "__main__", "__builtins__": builtins}
            code, kind = _run_cell(spec["code"], glb, "<sandbox>")
    except BaseException:
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            pass
    _sweep_self(spec)
    try:
        os.write(status_w, _status_frame(code, kind))
    except OSError:
        pass
    os._exit(code & 0xFF if code >= 0 else 128 - code)  # a shell killed by signal N exits 128+N, as sh says


def child_file_op(spec: dict, fds: tuple, status_w: int) -> None:
    """Read or write one file as the session uid (so symlinks cannot reach root-only files)."""
    result: dict = {"ok": False}
    try:
        _enter_child(spec, fds, ())
        path = spec["path"]
        if spec["op"] == "put":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(base64.b64decode(spec["data"]))
            if spec.get("mode"):
                os.chmod(path, int(spec["mode"]))
            result = {"ok": True}
        else:
            with open(path, "rb") as fh:
                data = fh.read(int(spec.get("max_bytes") or MAX_FRAME // 2) + 1)
            result = {"ok": True, "data": base64.b64encode(data).decode()}
    except BaseException as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    os.write(1, json.dumps(result).encode())
    os._exit(0)


def _fd_id(fd: int) -> tuple:
    try:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino
    except OSError:
        return ()


def _cell_cpu_limit(cpu_s: float | None) -> None:
    """Give this cell ``cpu_s`` seconds of CPU beyond what the session used so far (RLIMIT_CPU
    counts a process's lifetime, so a fixed limit would let a few long cells end the session)."""
    if not cpu_s:
        return
    used = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(used.ru_utime + used.ru_stime + float(cpu_s)) + 1
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)  # the code may have lowered it; it cannot be raised back
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ValueError, OSError):
        pass


def child_repl(spec: dict, fds: tuple, cmd_r: int, ctl_w: int) -> None:
    """Long-lived REPL child: runs code cells from ``cmd_r``, reports each on ``ctl_w``, then stops.

    Before each cell its standard streams are put back (a cell that closed fd 1 does not silence
    the next) and it gets a CPU budget of its own. After the report the process stops itself with
    SIGSTOP: the executor ends the cell only once it is stopped and continues it (SIGCONT) for the
    next one, so threads a cell left behind cannot run between cells. The report says how many such
    threads live and whether the saved streams are intact (else the executor restarts the session).
    """
    try:
        cmd_r, ctl_w = _enter_child(spec, fds, (cmd_r, ctl_w))
        for fd in (cmd_r, ctl_w):
            os.set_inheritable(fd, False)  # a shell the code starts must not write the report channel
        limits = dict(spec.get("limits") or {})
        limits.pop("cpu_s", None)  # per cell, see _cell_cpu_limit
        _set_limits(limits)
        saved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64) for fd in (0, 1, 2))
        ids = tuple(_fd_id(fd) for fd in saved)
        sys.argv = ["-c"]
        sys.path.insert(0, os.getcwd())
        glb = {"__name__": "__main__", "__builtins__": builtins}
        buf = bytearray()
        while True:
            chunk = os.read(cmd_r, 65536)
            if not chunk:
                os._exit(0)
            buf += chunk
            for cell in pop_frames(buf):
                # Drop the last cell's streams first: text left in them when the cell closed its fd
                # must not come out in this cell once the fd is back.
                sys.stdin = sys.stdout = sys.stderr = None
                for fd, copy in enumerate(saved):
                    os.dup2(copy, fd)
                sys.stdin, sys.stdout, sys.stderr = _open_stdio()
                _cell_cpu_limit(cell.get("cpu_s"))
                _write_files(cell.get("files"))
                code, kind = _run_cell(cell["code"], glb, "<cell>")
                _sweep_self(spec)
                report = {"exit": code, "kind": kind, "threads": len(os.listdir("/proc/self/task")) - 1,
                          "streams_ok": tuple(_fd_id(fd) for fd in saved) == ids}
                os.write(ctl_w, _frame(report))
                os.kill(os.getpid(), signal.SIGSTOP)
    except BaseException:
        os._exit(70)


# ------------------------------------------------------------------------------------ parent side
def sweep_uid(uid: int, attempts: int = 40) -> bool:
    """Kill every process of ``uid``; return True when none is left.

    Waits about a second at most (the loop is blocked meanwhile): a killed process with a large
    heap takes a moment to be torn down; one that outlives that is reported, not waited for.
    """
    for attempt in range(attempts):
        if not uid_processes(uid):
            return True
        if attempt >= 10:
            time.sleep(0.02)
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            except BaseException:
                pass
            os._exit(0)
        os.waitpid(pid, 0)
        time.sleep(0.002)
    return not uid_processes(uid)


_SYSVIPC = (("shm", "shmctl", 1, 7, 9), ("msg", "msgctl", 1, 7, 9), ("sem", "semctl", 1, 4, 6))  # kind, call, id/uid/cuid columns


def _ipc_ids(uids: tuple) -> list:
    """(kind, id) of every SysV IPC object (shared memory, message queue, semaphore set) that one of
    ``uids`` owns or created: they outlive every process, so an episode's would reach the next."""
    found = []
    for kind, _, id_col, uid_col, cuid_col in _SYSVIPC:
        try:
            with open(f"/proc/sysvipc/{kind}") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            try:
                if int(cols[uid_col]) in uids or int(cols[cuid_col]) in uids:
                    found.append((kind, int(cols[id_col])))
            except (IndexError, ValueError):
                pass
    return found


def remove_ipc(uid: int) -> bool:
    """Remove every SysV IPC object of ``uid`` (as that uid: its owner may, no capability needed);
    True when none is left."""
    if not _ipc_ids((uid,)):
        return True
    pid = os.fork()
    if pid == 0:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            calls = {kind: getattr(libc, call) for kind, call, *_ in _SYSVIPC}
            for kind, ipc_id in _ipc_ids((uid,)):
                if kind == "sem":
                    calls[kind](ipc_id, 0, 0)  # IPC_RMID is 0
                else:
                    calls[kind](ipc_id, 0, None)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return not _ipc_ids((uid,))


def uid_processes(uid: int) -> list:
    """Live processes of ``uid`` (zombies are dead already and are reaped by their parent or init)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid != uid:
                    continue
                with open(f"/proc/{name}/stat", "rb") as fh:
                    state = fh.read().rsplit(b")", 1)[1].split()[0]
                if state not in (b"Z", b"X"):
                    pids.append(int(name))
            except (OSError, IndexError):
                pass
    return pids


def _read_oom_kills() -> int:
    """The container's OOM-kill count (-1 if unknown). Read for every job, so raw syscalls."""
    for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        finally:
            os.close(fd)
        at = data.find(b"oom_kill ")
        if at >= 0:
            return int(data[at + 9:].split(None, 1)[0])
    return -1


def _rss_kb() -> int:
    """This process's resident memory (the executor's must stay bounded whatever children write)."""
    try:
        with open("/proc/self/status") as fh:
            return int(next(line for line in fh if line.startswith("VmRSS:")).split()[1])
    except (OSError, StopIteration, ValueError, IndexError):
        return -1


class Zygote:
    """A quiet interpreter that does nothing but fork prepared run children.

    After a fork, every page the parent or the child writes is copied, and fork and exit cost per
    mapped page. The executor's event loop writes all over its heap, so forking from it costs both
    processes hundreds of page copies per run. The zygote is started once, before any socket
    exists, as a fresh interpreter that loads this module's bytecode without the executor's own
    imports (about half the executor's memory); it does once the first-time work of a run child (:func:`_prime_zygote`), freezes
    its objects for the garbage collector and then only waits, so its children share a still,
    warm heap. Requests arrive as SEQPACKET messages carrying the child's pipes (SCM_RIGHTS); the
    zygote answers ``F <id> <pid>`` and reports each child's exit as ``X <pid> <wait status>``.
    """

    def __init__(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        here = os.path.dirname(os.path.abspath(__file__))
        _cache_bytecode()
        pid = os.fork()
        if pid == 0:
            mine.close()
            try:
                os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", _ZYGOTE_BOOT, here,
                                          str(theirs.fileno())])
            except OSError:
                _zygote_loop(theirs)  # no interpreter to start: be the zygote as this copy
            finally:
                os._exit(0)
        theirs.close()
        self.pid, self.sock, self.next_id = pid, mine, 0
        self.pending: list = []  # (pid, wait status, may be a prepared child) read while awaiting a fork reply

    def fork(self, spec: dict, fds: list) -> int:
        """Ask for a prepared run child; blocks until its pid is known.

        Exit reports read meanwhile are queued in ``pending`` (handling them here could re-enter
        this method); the executor's loop drains the queue.
        """
        self.next_id += 1
        socket.send_fds(self.sock, [marshal.dumps({"id": self.next_id, "spec": spec})], fds)
        while True:
            data = self.sock.recv(65536)
            if not data:
                raise OSError("zygote exited")
            pid = self.parse(data, lambda p, st: self.pending.append((p, st, True)), self.next_id)
            if pid is not None:
                if pid < 0:
                    raise OSError("zygote could not fork")
                # An exit of this pid reported before its fork reply was its previous owner's.
                self.pending = [(p, st, ok and p != pid) for p, st, ok in self.pending]
                return pid

    @staticmethod
    def parse(data: bytes, on_exit, want: int = -1):  # noqa: ANN001, ANN205
        found = None
        for line in data.decode().splitlines():
            kind, a, b = line.split()
            if kind == "X":
                on_exit(int(a), int(b))
            elif int(a) == want:
                found = int(b)
        return found


_ZYGOTE_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); import executor; executor.zygote_main(int(sys.argv[2]))"


def _cache_bytecode() -> None:
    """Write this file's bytecode beside it, so the zygote loads it instead of compiling it (the
    compiler leaves megabytes of heap behind). Without it the zygote compiles; nothing breaks."""
    pid = os.fork()  # in a child: the compiler's leftovers would stay in the executor's heap too
    if pid == 0:
        try:
            import py_compile

            cached = py_compile.compile(__file__, doraise=True)
            # Owned like the directory, so whoever made it (the host, for a container) can remove it.
            owner = os.stat(os.path.dirname(os.path.abspath(__file__))).st_uid
            for path in (os.path.dirname(cached), cached):
                os.chown(path, owner, -1)
        finally:
            os._exit(0)  # a read-only directory, say: the zygote compiles instead
    os.waitpid(pid, 0)


def zygote_main(fd: int) -> None:
    """Entry point of the zygote's own interpreter (see :class:`Zygote`)."""
    try:
        _zygote_loop(_socket.socket(fileno=fd))
    finally:
        os._exit(0)


_FDS = struct.Struct("=5i")  # the five descriptors of a run child (see Executor.prepare)
_FDS_SPACE = _socket.CMSG_SPACE(_FDS.size)
_SIGCHLD = (signal.SIGCHLD,)


def _zygote_loop(sock: socket.socket) -> None:
    """Fork a run child per request; report exits. Kept to a few lines of straight code: every page
    the zygote writes while its children live is copied, so its per-fork work is its overhead."""
    _prime_zygote()
    gc.collect()
    gc.freeze()  # objects inherited from the executor are never scanned (or written) by the GC again
    gc.disable()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sock.setblocking(True)

    def reap(*_) -> None:  # SIGCHLD; its report is a datagram of its own, so it never splits another
        out = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            out.append(b"X %d %d" % (pid, status))
        if out:
            sock.send(b"\n".join(out))

    signal.signal(signal.SIGCHLD, reap)
    while True:
        msg, anc, _, _ = sock.recvmsg(65536, _FDS_SPACE)
        if not msg:
            os._exit(0)
        fds = _FDS.unpack(anc[0][2][:_FDS.size])
        req = marshal.loads(msg)  # from the executor, which trusts it
        # A child that dies at once must not be reported before its fork reply (the executor would
        # take the report for an earlier process with the same pid): hold SIGCHLD until it is sent.
        _signal.pthread_sigmask(_signal.SIG_BLOCK, _SIGCHLD)
        try:
            pid = os.fork()
        except OSError:
            pid = -1
        if pid == 0:
            child_run(req["spec"], fds[:3], fds[3], fds[4])
        for fd in fds:
            os.close(fd)
        sock.send(b"F %d %d" % (req["id"], pid))
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, _SIGCHLD)


def fork_child(fork, fds: tuple, child_ends: tuple, child) -> int:
    """Fork (``fork`` is ``os.fork`` or a zygote request) and run ``child()`` in the new process.

    The child never returns to the executor's code (``os._exit`` whatever happens). On a failed
    fork every descriptor in ``fds`` is closed before the error is raised; after a fork the parent
    closes ``child_ends``, the descriptors only the child uses.
    """
    try:
        pid = fork()
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    if pid == 0:
        try:
            child()
        finally:
            os._exit(71)
    for fd in child_ends:
        os.close(fd)
    return pid


class Job:
    """One child the loop is watching: a run, a file op, or a REPL cell."""

    def __init__(self, conn, kind: str, pid: int, out_r: int, err_r: int, status_r: int, deadline: float,
                 limit: int, pgid: int) -> None:
        self.conn, self.kind, self.pid, self.pgid = conn, kind, pid, pgid
        self.out_r, self.err_r, self.status_r = out_r, err_r, status_r
        self.out, self.err = bytearray(), bytearray()
        self.deadline, self.limit = deadline, limit
        self.started = time.monotonic()
        self.timed_out = self.truncated = self.done = False
        self.exited = False
        self.wait_status = None
        self.pidfd = -1
        self.via_zygote = False
        self.oom_before = _read_oom_kills()
        self.ctl_buf = bytearray()
        self.report: dict | None = None  # a cell's report, taken once its process stopped
        self.bad_report = False  # the child wrote something other than one small report
        self.sess = conn.session
        conn.job = self


class Session:
    def __init__(self, slot: int, uid_run: int, uid_repl: int, gid: int, workdir: str) -> None:
        self.slot, self.uid_run, self.uid_repl, self.gid, self.workdir = slot, uid_run, uid_repl, gid, workdir
        self.repl = None  # dict(pid, cmd_w, out_r, err_r, ctl_r)
        self.warm = None  # a run child prepared ahead of demand: dict(pid, cmd_w, stdin_w, out_r, err_r, status_r)


class Executor:
    """Single-threaded event loop: sockets, child pipes and pidfds on one selector."""

    def __init__(self, args) -> None:
        self.args = args
        # Forked before any socket or selector exists, so it holds nothing but the code.
        self.zygote = Zygote() if not args.no_zygote else None
        self.zjobs: dict = {}  # pid -> Job, for children of the zygote
        self.zwarm: set = set()  # prepared zygote children not yet handed a request
        self.zexited: dict = {}  # pid -> wait status of prepared children that died unused
        self.sel = selectors.DefaultSelector()
        # A REPL cell ends when its process stops (see child_repl): SIGCHLD tells us, through a pipe.
        self.cells: set = set()  # cell jobs whose process has not stopped yet
        # Without pidfds (gVisor has no pidfd_open) a job's exit is found on SIGCHLD instead.
        self.pidfds = hasattr(os, "pidfd_open")
        self.polled: dict = {}  # pid -> Job watched for its exit through SIGCHLD
        self.reaping: set = set()  # pids killed after their job ended, collected on SIGCHLD
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.wake_r = wake_r
        self.sel.register(wake_r, selectors.EVENT_READ, ("sigchld", None))
        self.logged: list = []  # times of recent logged errors (rate limit, see _log_error)
        self.drop = not args.no_drop and os.geteuid() == 0
        # Where SysV IPC objects cannot be listed (and so not removed at reset), each child gets its own
        # IPC namespace instead; the executor checks once that this works (see private_ipc).
        self.private_ipc = self.drop and not os.path.exists("/proc/sysvipc/shm")
        self.slots: dict = {}
        self.conns = 0
        self.last_conn_change = time.monotonic()
        self.ever_connected = False
        self.timers: list = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(args.socket)
        except FileNotFoundError:
            pass
        self.listener.bind(args.socket)
        try:
            os.chmod(args.socket, 0o600 if self.drop else 0o666)
        except PermissionError:
            pass  # gVisor refuses chmod of a socket on a host mount; its directory is 0700 root already
        if args.socket_owner is not None:
            try:
                os.chown(args.socket, args.socket_owner, -1)
            except OSError:
                pass
        self.listener.listen(256)
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, ("accept", None))
        if self.zygote is not None:
            self.sel.register(self.zygote.sock, selectors.EVENT_READ, ("zygote", None))
        os.makedirs(args.workroot, exist_ok=True)

    # -- sessions -------------------------------------------------------------------------------
    def open_session(self) -> Session | None:
        for slot in range(self.args.max_sessions):
            if slot not in self.slots:
                base = self.args.uid_base + 2 * slot
                sess = Session(slot, base, base + 1, base, os.path.join(self.args.workroot, f"s{slot}"))
                self._fresh_dir(sess)
                self.slots[slot] = sess
                return sess
        return None

    def _fresh_dir(self, sess: Session) -> None:
        shutil.rmtree(sess.workdir, ignore_errors=True)
        os.makedirs(sess.workdir, exist_ok=True)
        if self.drop:
            os.chown(sess.workdir, sess.uid_run, sess.gid)
            os.chmod(sess.workdir, 0o2770)

    def reset_session(self, sess: Session) -> bool:
        """Kill every process of the session and wipe its files; True when verified clean."""
        self._stop_repl(sess)
        self._drop_warm(sess)
        clean = True
        if self.drop:
            clean = sweep_uid(sess.uid_run) and sweep_uid(sess.uid_repl)
            clean = remove_ipc(sess.uid_run) and remove_ipc(sess.uid_repl) and clean
            for tmp in ("/tmp", "/dev/shm", "/var/tmp", "/dev/mqueue"):
                self._wipe_owned(tmp, (sess.uid_run, sess.uid_repl))
        self._fresh_dir(sess)
        try:
            clean = clean and not os.listdir(sess.workdir)
        except OSError:
            clean = False
        return clean

    @staticmethod
    def _wipe_owned(root: str, uids: tuple) -> None:
        try:
            names = os.listdir(root)
        except OSError:
            return
        for name in names:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
                if st.st_uid in uids:
                    if stat.S_ISDIR(st.st_mode):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.unlink(path)
            except OSError:
                pass

    def close_session(self, sess: Session) -> None:
        self.reset_session(sess)
        shutil.rmtree(sess.workdir, ignore_errors=True)
        self.slots.pop(sess.slot, None)

    # -- forking --------------------------------------------------------------------------------
    def _spec(self, sess: Session, uid: int, req: dict) -> dict:
        return {"uid": uid, "gid": sess.gid, "drop": self.drop, "cwd": sess.workdir,
                "limits": req.get("limits") or {}, "tmpdir": "/tmp", "private_ipc": self.private_ipc}

    def _stdin_fd(self, data: str | None) -> int:
        fd = os.memfd_create("stdin", 0)
        if data:
            os.write(fd, data.encode())
            os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def start_child(self, conn, kind: str, target, spec: dict, req: dict) -> Job:
        """Fork a child for this request now (file ops, large stdin)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r, status_w = os.pipe()
        stdin_fd = self._stdin_fd(req.get("stdin"))
        pid = fork_child(os.fork, (out_r, out_w, err_r, err_w, status_r, status_w, stdin_fd),
                         (out_w, err_w, status_w, stdin_fd),
                         lambda: target(spec, (stdin_fd, out_w, err_w), status_w))
        return self._job(conn, kind, pid, out_r, err_r, status_r, req)

    def _job(self, conn, kind: str, pid: int, out_r: int, err_r: int, status_r: int, req: dict,
             zygote: bool = False) -> Job:
        timeout = float(req.get("timeout") or self.args.default_timeout)
        job = Job(conn, kind, pid, out_r, err_r, status_r, time.monotonic() + timeout,
                  int(req.get("output_limit") or 1 << 20), pid)
        job.via_zygote = zygote
        self._watch(job)
        return job

    def on_zygote_exit(self, pid: int, status: int, warm_ok: bool = True) -> None:
        """A child of the zygote exited (the zygote reaped it and sent its wait status)."""
        job = self.zjobs.pop(pid, None)
        if job is not None:
            job.wait_status, job.exited = status, True
            self.finish(job, None)
        elif warm_ok and pid in self.zwarm:
            self.zexited[pid] = status

    def on_zygote(self) -> None:
        try:  # non-blocking: a fork reply wait earlier in this batch may have read the packet already
            data = self.zygote.sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        if not data:
            # The zygote never runs user code; losing it means the container is in trouble.
            print("executor: zygote exited", file=sys.stderr)
            sys.exit(3)
        Zygote.parse(data, self.on_zygote_exit)

    def prepare(self, sess: Session) -> None:
        """Fork the session's next run child ahead of demand (it waits for its request)."""
        if sess.warm is not None:
            return
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        status_r, status_w = os.pipe()
        stdin_r, stdin_w = os.pipe()
        cmd_r, cmd_w = os.pipe()
        spec = self._spec(sess, sess.uid_run, {})
        zygote = self.zygote
        fork = (lambda: zygote.fork(spec, [stdin_r, out_w, err_w, status_w, cmd_r])) if zygote else os.fork
        pid = fork_child(fork, (out_r, out_w, err_r, err_w, status_r, status_w, stdin_r, stdin_w, cmd_r, cmd_w),
                         (out_w, err_w, status_w, stdin_r, cmd_r),
                         lambda: child_run(spec, (stdin_r, out_w, err_w), status_w, cmd_r))
        if zygote is not None:
            self.zwarm.add(pid)
        sess.warm = {"pid": pid, "cmd_w": cmd_w, "stdin_w": stdin_w, "out_r": out_r, "err_r": err_r,
                     "status_r": status_r}

    def _drop_warm(self, sess: Session) -> None:
        warm, sess.warm = sess.warm, None
        if warm is None:
            return
        try:
            os.kill(warm["pid"], signal.SIGKILL)
            if warm["pid"] not in self.zwarm:
                os.waitpid(warm["pid"], 0)
        except OSError:
            pass
        self.zwarm.discard(warm["pid"])
        self.zexited.pop(warm["pid"], None)
        for key in ("cmd_w", "stdin_w", "out_r", "err_r", "status_r"):
            os.close(warm[key])

    def start_run(self, conn, sess: Session, req: dict) -> Job:
        """Hand a run to the session's prepared child (stdin up to a pipe's capacity)."""
        stdin = (req.get("stdin") or "").encode()
        if len(stdin) > 60_000:
            spec = self._spec(sess, sess.uid_run, req)
            spec.update(mode=req.get("mode", "python"), code=req.get("code", ""), files=req.get("files"),
                        limits=req.get("limits") or {})
            return self.start_child(conn, "run", child_run, spec, req)
        self.prepare(sess)
        warm, sess.warm = sess.warm, None
        try:
            if stdin:
                os.write(warm["stdin_w"], stdin)
            os.write(warm["cmd_w"], _request_frame({"mode": req.get("mode", "python"), "code": req.get("code", ""),
                                                    "files": req.get("files"),
                                                    "limits": req.get("limits") or {}}))
        except OSError:
            pass  # the child died while waiting; its exit is reported like any other
        os.close(warm["stdin_w"])
        os.close(warm["cmd_w"])
        pid = warm["pid"]
        if pid in self.zwarm:
            self.zwarm.discard(pid)
            job = self._job(conn, "run", pid, warm["out_r"], warm["err_r"], warm["status_r"], req, zygote=True)
            if pid in self.zexited:  # it died while waiting for this request
                self.on_zygote_exit(pid, self.zexited.pop(pid))
            return job
        return self._job(conn, "run", pid, warm["out_r"], warm["err_r"], warm["status_r"], req)

    def _watch(self, job: Job) -> None:
        for fd, tag in ((job.out_r, "out"), (job.err_r, "err")):
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, (tag, job))
        if job.kind == "cell":  # a run's report is read once it exited (see finish), a cell's as it comes
            os.set_blocking(job.status_r, False)
            self.sel.register(job.status_r, selectors.EVENT_READ, ("ctl", job))
            self.cells.add(job)
        if job.via_zygote:
            self.zjobs[job.pid] = job
        elif self.pidfds:
            try:
                job.pidfd = os.pidfd_open(job.pid)
            except OSError:  # ENOSYS (gVisor): watch through SIGCHLD from now on
                self.pidfds = False
                self.polled[job.pid] = job
            else:
                self.sel.register(job.pidfd, selectors.EVENT_READ, ("exit", job))
        else:
            self.polled[job.pid] = job
        heapq.heappush(self.timers, (job.deadline, id(job), job))

    # -- REPL -----------------------------------------------------------------------------------
    def _start_repl(self, sess: Session, req: dict) -> dict:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        cmd_r, cmd_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        stdin_fd = self._stdin_fd(None)
        spec = self._spec(sess, sess.uid_repl, req)
        pid = fork_child(os.fork, (out_r, out_w, err_r, err_w, cmd_r, cmd_w, ctl_r, ctl_w, stdin_fd),
                         (out_w, err_w, cmd_r, ctl_w, stdin_fd),
                         lambda: child_repl(spec, (stdin_fd, out_w, err_w), cmd_r, ctl_w))
        for fd in (out_r, err_r, ctl_r):
            os.set_blocking(fd, False)
        return {"pid": pid, "cmd_w": cmd_w, "out_r": out_r, "err_r": err_r, "ctl_r": ctl_r}

    def _stop_repl(self, sess: Session) -> None:
        repl, sess.repl = sess.repl, None
        if not repl:
            return
        try:
            os.killpg(repl["pid"], signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(repl["pid"], 0)
        except ChildProcessError:
            pass
        for fd in (repl["cmd_w"], repl["out_r"], repl["err_r"], repl["ctl_r"]):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.drop:
            sweep_uid(sess.uid_repl)

    def start_cell(self, conn, sess: Session, req: dict) -> Job:
        restarted = sess.repl is None
        if restarted:
            sess.repl = self._start_repl(sess, req)
        repl = sess.repl
        cpu_s = (req.get("limits") or {}).get("cpu_s")
        msg = json.dumps({"code": req.get("code", ""), "files": req.get("files"), "cpu_s": cpu_s}).encode()
        job = Job(conn, "cell", repl["pid"], repl["out_r"], repl["err_r"], repl["ctl_r"],
                  time.monotonic() + float(req.get("timeout") or self.args.default_timeout),
                  int(req.get("output_limit") or 1 << 20), repl["pid"])
        try:
            if not restarted:
                os.kill(repl["pid"], signal.SIGCONT)  # it stopped itself after the last cell
            os.write(repl["cmd_w"], _LEN.pack(len(msg)) + msg)  # the REPL is idle between cells, so it drains this
        except OSError:
            pass
        self._watch(job)
        return job

    # -- completion -----------------------------------------------------------------------------
    def _drain(self, job: Job, fd: int, into: bytearray) -> bool:
        """Read what is available; False on EOF."""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not chunk:
                return False
            room = job.limit - len(job.out) - len(job.err)
            if room > 0:
                into += chunk[:room]
            if len(chunk) > room:
                job.truncated = True
                self._kill_job(job)
                return True

    @staticmethod
    def _kill_job(job: Job) -> None:
        for kill, target in ((os.killpg, job.pgid), (os.kill, job.pid)):
            try:
                kill(target, signal.SIGKILL)
            except OSError:
                pass

    def finish(self, job: Job, status: dict | None) -> None:
        """Collect a finished (or killed) job, clean up after it and answer its connection.

        Called once a run's process exited (its wait status is known), once a cell's process
        stopped after its report, or when a connection goes away. A run that got as far as its
        report has already swept its uid; one that did not is swept here.
        """
        if job.done:
            return
        job.done = True
        for fd in (job.out_r, job.err_r, job.status_r, job.pidfd):
            if fd < 0:
                continue
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError):
                pass
        self.cells.discard(job)
        self._drain(job, job.out_r, job.out)
        self._drain(job, job.err_r, job.err)
        sess = job.sess
        if job.kind == "run":
            status = self._read_report(job)
        if job.kind != "cell":
            for fd in (job.out_r, job.err_r, job.status_r):
                os.close(fd)
            if job.via_zygote:
                self.zjobs.pop(job.pid, None)  # the zygote reaps it
                if not job.exited:
                    self._kill_job(job)
            elif job.exited:
                self._close_pidfd(job)
            else:
                self._kill_job(job)
                self.polled.pop(job.pid, None)
                if job.pidfd >= 0:
                    self.sel.register(job.pidfd, selectors.EVENT_READ, ("reap", job))
                else:
                    self.reaping.add(job.pid)
        else:
            self.polled.pop(job.pid, None)
            self._close_pidfd(job)
        reply = self._classify(job, status)
        if job.kind == "cell":
            self._after_cell(job, status, reply)
        elif job.kind == "run" and self.drop and (status is None or job.timed_out or job.truncated):
            sweep_uid(sess.uid_run)
        if job.kind == "file":
            reply = self._file_reply(job)
        job.conn.job = None
        job.conn.reply(reply)
        if job.kind == "run" and sess.slot in self.slots and self.slots[sess.slot] is sess:
            try:
                self.prepare(sess)
            except OSError:
                pass  # no fork now (memory or pids pressure); the next run forks on demand

    @staticmethod
    def _close_pidfd(job: Job) -> None:
        if job.pidfd >= 0:
            os.close(job.pidfd)
            job.pidfd = -1

    def reap(self, job: Job) -> None:
        try:
            self.sel.unregister(job.pidfd)
        except (KeyError, ValueError):
            pass
        try:
            os.waitpid(job.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        self._close_pidfd(job)

    def abort(self, job: Job) -> None:
        """Kill a job whose connection went away and collect it synchronously."""
        self._kill_job(job)
        if not job.via_zygote:
            try:
                _, job.wait_status = os.waitpid(job.pid, 0)
            except ChildProcessError:
                pass
        job.exited = True
        self.finish(job, None)

    def _after_cell(self, job: Job, status: dict | None, reply: dict) -> None:
        """Restart the session when the cell killed, broke or outlived it; say what it left behind."""
        notes = []
        if job.bad_report:
            notes.append("The cell wrote to the session's report channel.")
        streams_lost = status is not None and not status.get("streams_ok", True)
        if streams_lost:
            notes.append("The cell closed or replaced the session's saved standard streams.")
        if job.timed_out or job.truncated or job.exited or job.bad_report or streams_lost:
            # The REPL child is dead, was killed or cannot be trusted: the next cell starts a fresh one.
            self._stop_repl(job.sess)
            notes.append("The Python session was restarted; earlier variables are gone.")
        elif status and status.get("threads"):
            notes.append(f"{int(status['threads'])} thread(s) started by cells are still alive: they are paused "
                         "between cells and run again during the next one.")
        if notes:
            reply["note"] = " ".join(notes)

    @staticmethod
    def _read_report(job: Job) -> dict | None:
        """A finished run child's own report: one small frame, read only after it exited."""
        try:
            frames = pop_frames(bytearray(os.read(job.status_r, MAX_REPORT + 4)), MAX_REPORT)
            return frames[0] if len(frames) == 1 and isinstance(frames[0], dict) else None
        except (OSError, ValueError):
            return None

    def _classify(self, job: Job, status: dict | None) -> dict:
        """The result, decided from what the code cannot write (see the module docstring)."""
        wall = time.monotonic() - job.started
        waited = os.waitstatus_to_exitcode(job.wait_status) if job.wait_status is not None else None
        if job.kind == "cell" and status is not None:
            code = status.get("exit")  # the session's own report, taken only once it stopped
        else:
            code = waited
        # A run's report may only say why it failed (MemoryError under its address-space limit).
        hint = status.get("kind") if status and code not in (0, None) else None
        if job.timed_out:
            result = "timeout"
        elif job.truncated:
            result = "output_truncated"
        elif job.bad_report:
            result = "error"
        elif hint == "oom" or (code != 0 and _read_oom_kills() > job.oom_before >= 0):
            result = "oom"
        elif code is not None and code < 0:
            result = "killed"
        else:
            result = "ok" if code == 0 else "error"
        return {"ok": True, "status": result, "exit_code": code,
                "stdout": job.out.decode("utf-8", "replace"), "stderr": job.err.decode("utf-8", "replace"),
                "wall_s": wall}

    def _file_reply(self, job: Job) -> dict:
        try:
            res = json.loads(bytes(job.out))
        except ValueError:
            res = {"ok": False, "error": "file operation failed"}
        return {"ok": True, "file": res}

    def on_exit(self, job: Job) -> None:
        try:
            _, job.wait_status = os.waitpid(job.pid, os.WNOHANG)
        except ChildProcessError:
            pass
        job.exited = True
        self.finish(job, None)

    def on_ctl(self, job: Job) -> None:
        """A REPL cell's report arrived (or part of it); the cell ends once its process stopped."""
        try:
            chunk = os.read(job.status_r, MAX_REPORT + 4)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            # Closed without a report (the child died): stop watching; its exit decides.
            try:
                self.sel.unregister(job.status_r)
            except (KeyError, ValueError):
                pass
            return
        job.ctl_buf += chunk
        try:
            frames = pop_frames(job.ctl_buf, MAX_REPORT)
            if len(job.ctl_buf) > MAX_REPORT or len(frames) > 1 or any(not isinstance(f, dict) for f in frames):
                raise ValueError("not one report")
        except ValueError:
            job.bad_report = True  # ends the cell: the kill is reported as the session's exit
            self._kill_job(job)
            return
        if frames:
            job.report = frames[0]
            self._check_cell(job)

    def _check_cell(self, job: Job) -> None:
        """End a reported cell once its process has stopped itself (a report alone proves nothing)."""
        if job.report is None or job.done:
            return
        # waitpid, not waitid(WSTOPPED): gVisor's waitid reports a stop with the wrong si_code.
        try:
            pid, status = os.waitpid(job.pid, os.WUNTRACED | os.WNOHANG)
        except ChildProcessError:
            return  # already collected: its exit is being reported
        if pid == 0:
            return
        if os.WIFSTOPPED(status):
            self.finish(job, job.report)
        else:  # it exited after reporting: the exit decides, as on_exit would
            job.wait_status, job.exited = status, True
            self.finish(job, None)

    def on_sigchld(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        for job in list(self.cells):
            self._check_cell(job)
        for pid, job in list(self.polled.items()):  # exits a pidfd would have reported
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = True
            if info is not None and self.polled.pop(pid, None) is job and not job.done:
                self.on_exit(job)
        for pid in list(self.reaping):
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            except ChildProcessError:
                pass
            self.reaping.discard(pid)

    def on_timer(self) -> float | None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, job = heapq.heappop(self.timers)
            if not job.done:
                job.timed_out = True
                self._kill_job(job)
        return (self.timers[0][0] - now) if self.timers else None

    # -- request dispatch -----------------------------------------------------------------------
    def handle(self, conn, req: dict) -> None:
        op = req.get("op")
        if op == "ping":
            conn.reply({"ok": True, "pid": os.getpid(), "sessions": len(self.slots), "drop": self.drop,
                        "protocol": PROTOCOL_VERSION, "rss_kb": _rss_kb(),
                        "ipc": "namespace per child" if self.private_ipc else "removed at reset"})
            return
        if op == "open":
            if conn.session is None:
                conn.session = self.open_session()
            if conn.session is None:
                conn.reply({"ok": False, "error": "no free session slot"})
                return
            s = conn.session
            conn.reply({"ok": True, "workdir": s.workdir, "slot": s.slot, "uid": s.uid_run})
            return
        sess = conn.session
        if sess is None:
            conn.reply({"ok": False, "error": "open a session first"})
            return
        if op == "exec":
            mode = req.get("mode", "python")
            if mode == "repl":
                self.start_cell(conn, sess, req)
            else:
                self.start_run(conn, sess, req)
        elif op in ("put", "get"):
            spec = self._spec(sess, sess.uid_run, req)
            path = os.path.join(sess.workdir, req["path"])
            spec.update(op=op, path=path, data=req.get("data"), mode=req.get("mode"),
                        max_bytes=req.get("max_bytes"))
            # The reply is base64 of at most max_bytes: the executor buffers no more than that.
            reply_cap = (int(req.get("max_bytes") or MAX_FRAME // 2) * 4) // 3 + 4096
            req = dict(req, output_limit=min(MAX_FRAME, reply_cap), timeout=30)
            self.start_child(conn, "file", child_file_op, spec, req)
        elif op == "reset":
            conn.reply({"ok": True, "clean": self.reset_session(sess)})
        else:
            conn.reply({"ok": False, "error": f"unknown op {op!r}"})

    # -- main loop ------------------------------------------------------------------------------
    def serve(self) -> None:
        while True:
            while self.zygote is not None and self.zygote.pending:
                try:
                    self.on_zygote_exit(*self.zygote.pending.pop(0))
                except Exception:
                    self._log_error()
            wait = self.on_timer()
            orphan_wait = self._orphan_check()
            if orphan_wait is not None:
                wait = orphan_wait if wait is None else min(wait, orphan_wait)
            if self.zygote is not None and self.zygote.pending:
                wait = 0
            for key, _ in self.sel.select(wait):
                try:
                    self._dispatch(key)
                except Exception:  # one bad event (e.g. fork failing under memory pressure) must not end the loop
                    self._log_error()

    def _log_error(self) -> None:
        """Print the current exception, at most 10 a minute: the log is on the host's disk."""
        now = time.monotonic()
        self.logged = [t for t in self.logged if now - t < 60.0]
        if len(self.logged) < 10:
            self.logged.append(now)
            traceback.print_exc(file=sys.stderr)

    def _dispatch(self, key) -> None:
        tag, obj = key.data
        if isinstance(obj, Job) and obj.done and tag != "reap":
            return  # a stale event of this batch: the job ended (and its fds were reused) meanwhile
        if tag == "accept":
            self._accept()
        elif tag == "conn":
            obj.on_readable()
        elif tag == "exit":
            self.on_exit(obj)
        elif tag == "ctl":
            self.on_ctl(obj)
        elif tag == "reap":
            self.reap(obj)
        elif tag == "zygote":
            self.on_zygote()
        elif tag == "sigchld":
            self.on_sigchld()
        else:
            self._drain(obj, key.fd, obj.out if tag == "out" else obj.err)

    def _orphan_check(self) -> float | None:
        grace = self.args.orphan_grace
        if grace <= 0 or self.conns:
            return None
        idle = time.monotonic() - self.last_conn_change
        limit = grace if self.ever_connected else max(grace, 20.0)
        if idle >= limit:
            for sess in list(self.slots.values()):
                self.close_session(sess)
            sys.exit(0)
        return limit - idle

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(True)
        conn = Conn(self, sock)
        self.conns += 1
        self.ever_connected = True
        self.last_conn_change = time.monotonic()
        self.sel.register(sock, selectors.EVENT_READ, ("conn", conn))


class Conn:
    """One host connection; becomes a session on ``open``. Requests on it are served one at a time."""

    def __init__(self, ex: Executor, sock: socket.socket) -> None:
        self.ex, self.sock, self.buf, self.session = ex, sock, bytearray(), None
        self.busy, self.closed, self.queue = False, False, []
        self.job: Job | None = None

    def on_readable(self) -> None:
        try:
            chunk = self.sock.recv(1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            self.close()
            return
        self.buf += chunk
        try:
            self.queue.extend(pop_frames(self.buf))
        except ValueError:
            self.close()
            return
        self._next()

    def _next(self) -> None:
        while self.queue and not self.busy and not self.closed:
            self.busy = True
            req = self.queue.pop(0)
            try:
                self.ex.handle(self, req)
            except Exception as exc:
                self.reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})

    def reply(self, obj: dict) -> None:
        self.busy = False
        if self.closed:
            return
        try:
            send_frame(self.sock, obj)
        except OSError:
            self.close()
            return
        self._next()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.ex.sel.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        self.ex.conns -= 1
        self.ex.last_conn_change = time.monotonic()
        if self.job is not None and not self.job.done:
            self.ex.abort(self.job)
        if self.session is not None:
            self.ex.close_session(self.session)
            self.session = None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True)
    p.add_argument("--workroot", default="/work")
    p.add_argument("--uid-base", type=int, default=100000)
    p.add_argument("--max-sessions", type=int, default=16)
    p.add_argument("--default-timeout", type=float, default=30.0)
    p.add_argument("--orphan-grace", type=float, default=10.0)
    p.add_argument("--socket-owner", type=int, default=None)
    p.add_argument("--no-drop", action="store_true", help="run children as the executor's own uid")
    p.add_argument("--no-zygote", action="store_true", help="fork run children from the executor itself")
    args = p.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # The executor is the zygote: every child is forked from it. Forking and exiting cost grows with
    # the parent's mapped memory, so it imports only what it needs (and runs with -S, no site).
    traceback.extract_stack  # noqa: B018 (keep the import used: children print tracebacks)
    Executor(args).serve()


if __name__ == "__main__":
    import argparse
    import heapq
    import json
    import selectors
    import shutil
    import socket
    import stat

    main()
