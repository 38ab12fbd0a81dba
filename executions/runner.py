"""Run one command under a deadline, in its own process group, with bounded output.

This module knows processes and nothing of Django or Celery: callers pass a
``CommandSpec`` and optional hooks and get a ``RunResult`` back.

Guarantees:
- the command runs in a new session (its own process group); stdin is closed;
- at the deadline, or when ``cancel_requested()`` says so, SIGTERM goes to the
  whole group, then SIGKILL after ``kill_grace`` seconds;
- when the command's leader exits, whatever it left behind in its group is
  stopped too, and the leader is reaped only after that, so its process group
  id cannot be reused while TaskHub still signals it;
- if the calling process dies, a small watcher process (in its own session)
  kills every group still registered, grandchildren included;
- stdout and stderr are kept separately, each bounded: the first and the last
  part are kept with a marker naming how much was cut between them.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# Environment variables a command inherits from the worker; everything else
# comes from the task's own ``env`` and TaskHub's TASKHUB_* variables.
BASE_ENV_NAMES = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READ_CHUNK = 64 * 1024
# After the group is killed, how long to wait for its pipes to close.
DRAIN_AFTER_KILL = 1.0


class OutputBuffer:
    """Keep the first and the last bytes of a stream within ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 2)
        self.head_limit = self.limit // 2
        self.tail_limit = self.limit - self.head_limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            # Trim only when twice the limit: amortised O(1) per byte.
            if len(self.tail) > 2 * self.tail_limit:
                del self.tail[: len(self.tail) - self.tail_limit]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        """Return the kept output as text: UTF-8 with replacement, NUL shown as U+FFFD."""
        if not self.truncated:
            return _decode(bytes(self.head) + bytes(self.tail))
        tail = bytes(self.tail[-self.tail_limit :])
        cut = self.total - len(self.head) - len(tail)
        marker = f"\n\n[… TaskHub cut {cut} bytes of output here; {self.total} bytes in all …]\n\n"
        return _decode(bytes(self.head)) + marker + _decode(tail)


def _decode(data: bytes) -> str:
    # Databases refuse NUL in text columns (PostgreSQL does): replace it too.
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


@dataclass
class CommandSpec:
    argv: list[str]
    timeout: float
    kill_grace: float = 10
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = ""
    output_limit: int = 1024 * 1024
    heartbeat_interval: float = 5.0
    cancel_poll_interval: float = 1.0


@dataclass
class RunResult:
    outcome: str  # "succeeded", "failed", "timeout", "cancelled" or "not_started"
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = False
    error: str = ""
    pid: int | None = None
    max_rss_kb: int | None = None
    cpu_user: float | None = None
    cpu_system: float | None = None
    duration: float = 0.0
    started: float = 0.0  # monotonic


@dataclass
class Hooks:
    """Callbacks from the run loop; each may be None."""

    on_start: Callable[[int], None] | None = None
    on_heartbeat: Callable[[OutputBuffer, OutputBuffer], None] | None = None
    cancel_requested: Callable[[], bool] | None = None
    # Called once the command's group is gone, when on_start was called.
    on_exit: Callable[[], None] | None = None
    # A file descriptor (e.g. an eventfd) that someone else makes readable to
    # have cancel_requested() asked at once instead of at the next poll.
    wakeup_fd: int | None = None


def build_env(extra: Mapping[str, str]) -> dict[str, str]:
    environ = os.environ
    env = {name: value for name in BASE_ENV_NAMES if (value := environ.get(name)) is not None}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(extra)
    return env


def processes_with_env(name: str, value: str) -> list[int]:
    """PIDs of live (not zombie) processes whose environment holds ``name=value`` (Linux /proc)."""
    marker = f"{name}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if marker not in fh.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


# -- the watcher: kills registered groups when this process dies -----------------

_WATCHER_SOURCE = r"""
import os, signal, struct, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
table = int(sys.argv[1])
while sys.stdin.buffer.read(4096):
    pass
data = os.pread(table, os.fstat(table).st_size, 0)
for pgid in struct.unpack("%di" % (len(data) // 4), data[: len(data) // 4 * 4]):
    if pgid > 0:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
"""

_SLOT = 4  # bytes per registered group: one int32 pgid, 0 when free


def _write_slot(table: int, slot: int, pgid: int) -> None:
    os.pwrite(table, pgid.to_bytes(_SLOT, sys.byteorder, signed=True), slot * _SLOT)


class GroupWatcher:
    """A process that outlives this one and kills the groups it was told about.

    The parent-death signal would reach only the command's leader; its
    children and grandchildren would run on. The watcher sits in its own
    session blocked on a pipe from this process; when this process dies, for
    any reason, the pipe closes and the watcher SIGKILLs every group in the
    table. The table is a memory file both processes hold: registering a
    group is one ``pwrite`` here and wakes nobody, and the watcher reads the
    table only once, after this process is gone, so it never sees a half
    written entry.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid: int | None = None
        self._table = -1
        self._slots: dict[int, int] = {}  # pgid -> slot
        self._free: list[int] = []

    def _ensure(self) -> None:
        # A forked child (a new pool process) must start its own watcher;
        # a watcher that died is replaced, with the groups registered so far.
        if self._proc is not None and self._owner_pid == os.getpid() and self._proc.poll() is None:
            return
        if self._owner_pid != os.getpid():
            self._slots, self._free = {}, []
        elif self._proc is not None and self._proc.stdin is not None:
            self._proc.stdin.close()  # the watcher that died
        table = os.memfd_create("taskhub-groups", os.MFD_CLOEXEC)
        for pgid, slot in self._slots.items():
            _write_slot(table, slot, pgid)
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHER_SOURCE, str(table)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=(table,),
        )
        if self._owner_pid == os.getpid() and self._table >= 0:
            os.close(self._table)
        self._table = table
        self._owner_pid = os.getpid()

    def register(self, pgid: int) -> None:
        with self._lock:
            self._ensure()
            slot = self._free.pop() if self._free else len(self._slots)
            _write_slot(self._table, slot, pgid)
            self._slots[pgid] = slot

    def unregister(self, pgid: int) -> None:
        with self._lock:
            slot = self._slots.pop(pgid, None)
            if slot is None or self._owner_pid != os.getpid():
                return
            _write_slot(self._table, slot, 0)
            self._free.append(slot)


watcher = GroupWatcher()


# -- running ------------------------------------------------------------------------


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        # Only possible if the pgid was reused by another user's process,
        # which cannot happen while the leader is unreaped; ignore defensively.
        pass


def _start_error(spec: CommandSpec, cwd: str, exc: OSError) -> str:
    program = spec.argv[0] if spec.argv else ""
    if getattr(exc, "filename", None) == cwd:
        # The child could not change into it: say why in words.
        return _check_cwd(cwd) or f"Cannot start: working directory {cwd!r}: {exc.strerror}."
    if isinstance(exc, FileNotFoundError):
        return f"Cannot start: command not found: {program!r} (searched PATH={spec.env.get('PATH', '')!r})."
    if isinstance(exc, PermissionError):
        return f"Cannot start: permission denied executing {program!r} (is it executable?)."
    if exc.errno == errno.ENOEXEC:
        return f"Cannot start: {program!r} is not an executable format (missing #! line?)."
    return f"Cannot start {program!r}: {exc.strerror or exc}."


def _check_cwd(cwd: str) -> str:
    if not os.path.exists(cwd):
        return f"Cannot start: working directory {cwd!r} does not exist."
    if not os.path.isdir(cwd):
        return f"Cannot start: working directory {cwd!r} is not a directory."
    if not os.access(cwd, os.X_OK):
        return f"Cannot start: working directory {cwd!r} is not accessible (permission denied)."
    return ""


def run_command(spec: CommandSpec, hooks: Hooks | None = None) -> RunResult:
    """Run ``spec`` to the end and return what happened. Never raises for the command's faults."""
    hooks = hooks or Hooks()
    if not spec.argv:
        return RunResult(outcome="not_started", error="Cannot start: the command is empty.")
    cwd = spec.cwd or tempfile.gettempdir()
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            spec.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=dict(spec.env),
            start_new_session=True,
        )
    except OSError as exc:
        return RunResult(outcome="not_started", error=_start_error(spec, cwd, exc))
    except (ValueError, TypeError) as exc:  # e.g. a NUL byte in argv or env
        return RunResult(outcome="not_started", error=f"Cannot start: {exc}.")

    pid = pgid = proc.pid
    watcher.register(pgid)
    result = RunResult(outcome="failed", pid=pid, started=started)
    out = OutputBuffer(spec.output_limit)
    err = OutputBuffer(spec.output_limit)
    reaped = False
    try:
        if hooks.on_start:
            hooks.on_start(pid)
        status = _supervise(proc, spec, hooks, out, err, result)
        # The group is gone (or was killed): forget it, then reap the leader,
        # freeing its pid (the watcher must never signal a reused group id).
        watcher.unregister(pgid)
        _, wait_status, rusage = os.wait4(pid, 0)
        reaped = True
        proc.returncode = os.waitstatus_to_exitcode(wait_status)
        result.max_rss_kb = rusage.ru_maxrss
        result.cpu_user = rusage.ru_utime
        result.cpu_system = rusage.ru_stime
        if os.WIFSIGNALED(wait_status):
            result.signal = os.WTERMSIG(wait_status)
        else:
            result.exit_code = os.WEXITSTATUS(wait_status)
        if status is not None:
            result.outcome = status
        elif result.exit_code == 0:
            result.outcome = "succeeded"
        else:
            result.outcome = "failed"
            if result.signal is not None:
                result.error = f"The command was killed by signal {result.signal} ({_signame(result.signal)})."
            else:
                result.error = f"The command exited with code {result.exit_code}."
    finally:
        if not reaped:
            # The supervisor was interrupted (e.g. Celery's backstop time
            # limit): never leave the group behind.
            _killpg(pgid, signal.SIGKILL)
            watcher.unregister(pgid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if hooks.on_exit:
            hooks.on_exit()
    result.stdout = out.text()
    result.stderr = err.text()
    result.output_truncated = out.truncated or err.truncated
    result.duration = time.monotonic() - started
    return result


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _supervise(
    proc: subprocess.Popen[bytes],
    spec: CommandSpec,
    hooks: Hooks,
    out: OutputBuffer,
    err: OutputBuffer,
    result: RunResult,
) -> str | None:
    """Pump output and enforce deadline and cancellation until the group is done.

    Return "timeout" or "cancelled" when TaskHub stopped the command, else None.
    The leader is left unreaped (a zombie) so its pgid stays reserved.
    """
    pgid = proc.pid
    # poll(2): no kernel object to create, fill and close for each command, as epoll
    # has, and no limit on descriptor numbers, as select(2) has (a threads pool may
    # run a thousand commands).
    sel = selectors.PollSelector()
    buffers = {}
    for stream, buf in ((proc.stdout, out), (proc.stderr, err)):
        assert stream is not None
        os.set_blocking(stream.fileno(), False)
        sel.register(stream.fileno(), selectors.EVENT_READ)
        buffers[stream.fileno()] = buf
    pidfd = os.pidfd_open(proc.pid)
    sel.register(pidfd, selectors.EVENT_READ)
    wakeup_fd = hooks.wakeup_fd if hooks.cancel_requested else None
    if wakeup_fd is not None:
        sel.register(wakeup_fd, selectors.EVENT_READ)
    open_pipes = 2
    leader_done = False

    start = result.started
    deadline = start + spec.timeout
    next_heartbeat = start + spec.heartbeat_interval
    next_cancel_check = start + spec.cancel_poll_interval
    stop_reason: str | None = None
    kill_at: float | None = None
    killed = False
    give_up_at: float | None = None  # after SIGKILL, stop waiting for pipes

    def terminate(now: float) -> None:
        nonlocal kill_at
        _killpg(pgid, signal.SIGTERM)
        kill_at = now + spec.kill_grace

    try:
        while True:
            now = time.monotonic()
            if stop_reason is None and now >= deadline:
                stop_reason = "timeout"
                terminate(now)
            if stop_reason is None and hooks.cancel_requested and now >= next_cancel_check:
                next_cancel_check = now + spec.cancel_poll_interval
                if hooks.cancel_requested():
                    stop_reason = "cancelled"
                    terminate(now)
            if not killed and kill_at is not None and now >= kill_at:
                _killpg(pgid, signal.SIGKILL)
                killed = True
                give_up_at = now + DRAIN_AFTER_KILL
            if hooks.on_heartbeat and now >= next_heartbeat:
                hooks.on_heartbeat(out, err)
                next_heartbeat = time.monotonic() + spec.heartbeat_interval

            if leader_done:
                if open_pipes == 0:
                    # Stragglers that let go of the output: stop them now.
                    if not killed:
                        _killpg(pgid, signal.SIGKILL)
                    break
                if kill_at is None:
                    # The command exited but left processes holding its output open.
                    terminate(now)
            if give_up_at is not None and now >= give_up_at:
                break

            wakeups = [next_heartbeat if hooks.on_heartbeat else None]
            if stop_reason is None:
                wakeups.append(deadline)
                if hooks.cancel_requested:
                    wakeups.append(next_cancel_check)
            if not killed:
                wakeups.append(kill_at)
            wakeups.append(give_up_at)
            wait = min(w for w in wakeups if w is not None) - now if any(w is not None for w in wakeups) else None
            for key, _ in sel.select(max(wait, 0) if wait is not None else None):
                fd = key.fd
                if fd == pidfd:
                    sel.unregister(pidfd)
                    leader_done = True
                    continue
                if fd == wakeup_fd:
                    try:
                        os.read(fd, 8)
                    except BlockingIOError:
                        pass
                    next_cancel_check = 0.0  # ask at the top of the loop
                    continue
                try:
                    chunk = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    continue
                if chunk:
                    buffers[fd].write(chunk)
                else:
                    sel.unregister(fd)
                    open_pipes -= 1
    finally:
        sel.close()
        os.close(pidfd)
    return stop_reason
