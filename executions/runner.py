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
  part are kept with a marker naming how much was cut between them;
- with ``run_as`` the command runs as that user and its primary group, with no
  supplementary groups, so it cannot read the worker's memory or environment;
  the runner refuses to start it as the worker's own user instead;
- error texts never show a value of ``secret_values`` (the task's own env);
- ``limits`` (executions/confine.py): past a memory, CPU time or process
  limit the command is stopped, and the error names the limit.
"""

from __future__ import annotations

import errno
import os
import pwd
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace

from executions import confine, rules, workspace

# Environment variables a command inherits from the worker; everything else
# comes from the task's own ``env`` and TaskHub's TASKHUB_* variables.
BASE_ENV_NAMES = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READ_CHUNK = 64 * 1024
# After the group is killed, how long to wait for its pipes to close.
DRAIN_AFTER_KILL = 1.0
# What error texts show in place of a hidden value (the admin and API mask env so too).
MASK = "\u2022\u2022\u2022\u2022"
# Capabilities a worker that is not root needs to run commands as another user:
# switch user and group, signal the command's group, hand it a private
# directory and remove that directory (in the sticky /tmp) afterwards.
SWITCH_CAPABILITIES = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
}


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
    # TASKHUB_RUN_AS: user name or uid to run the command as; "" = the worker's own user.
    run_as: str = ""
    # Values no error text may show (the task's own env values): replaced by MASK.
    secret_values: Collection[str] = ()
    limits: confine.Limits = field(default_factory=confine.Limits)
    # Downloaded into the working directory before the command: {"url", "path", "sha256"} each.
    resources: tuple[dict, ...] = ()
    # Bytes of artifacts kept per attempt; 0: no artifacts directory at all.
    artifacts_limit: int = 0


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
    # The command's peak resident memory in KiB: exact once the command grew
    # bigger than the worker that started it; below that the kernel cannot
    # tell the two apart, and it is the peak of the command's first process
    # as sampled at each heartbeat interval, or None for a command that ended
    # before the first sample (see _peak_rss_kb).
    max_rss_kb: int | None = None
    cpu_user: float | None = None
    cpu_system: float | None = None
    duration: float = 0.0
    started: float = 0.0  # monotonic
    artifacts: list[workspace.ArtifactFile] = field(default_factory=list)


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


def build_env(extra: Mapping[str, str], *, run_as: str = "") -> dict[str, str]:
    """Return the command's environment: the worker's BASE_ENV_NAMES, then ``extra``.

    Nothing else of the worker's environment (DATABASE_URL, the secret key, the
    broker's URL) reaches a command. With ``run_as``, HOME, USER and LOGNAME
    are that user's, and the worker's TMPDIR is left out (the runner gives the
    command a private one).
    """
    environ = os.environ
    env = {name: value for name in BASE_ENV_NAMES if (value := environ.get(name)) is not None}
    env.setdefault("PATH", DEFAULT_PATH)
    user = lookup_user(run_as) if run_as else None
    if user is not None:
        env.pop("TMPDIR", None)
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    env.update(extra)
    return env


def process_has_env(pid: int, name: str, value: str) -> bool:
    """Whether process ``pid`` is alive with ``name=value`` in its environment: ours, not a reused pid (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return f"{name}={value}".encode() in fh.read().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False


# -- the user commands run as -------------------------------------------------------


def lookup_user(run_as: str) -> pwd.struct_passwd | None:
    """Return the password entry for a user name or uid, or None when there is none."""
    name = run_as.strip()
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError, ValueError):
        return None


def switch_problem(status: str | None = None, euid: int | None = None) -> str:
    """Say why this process may not run commands as another user, or return "" when it may.

    It needs SWITCH_CAPABILITIES (root has them unless they were taken
    away) and, when it is not root, no ambient capabilities: a change from
    one non-root uid to another keeps those, and the command would get them
    (CAP_SETUID among them) back at its exec. ``status`` and ``euid``
    default to this process's own (/proc/self/status, geteuid).
    """
    euid = os.geteuid() if euid is None else euid
    if status is None:
        try:
            with open("/proc/self/status") as fh:
                status = fh.read()
        except OSError:
            return "" if euid == 0 else f"the worker (uid {euid}) is not root and its capabilities cannot be read."
    caps = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in {"CapEff", "CapAmb"}:
            caps[key] = int(value.strip(), 16)
    effective, ambient = caps.get("CapEff", 0), caps.get("CapAmb", 0)
    missing = [name for name, bit in SWITCH_CAPABILITIES.items() if not effective >> bit & 1]
    if missing:
        why = f"lacks {', '.join(missing)}"
    elif euid != 0 and ambient:
        why = "has ambient capabilities, which the command would inherit"
    else:
        return ""
    return (
        f"the worker (uid {euid}) may not run commands as another user: it {why}. "
        f"Run the worker as root, or give it {', '.join(SWITCH_CAPABILITIES)} and no ambient capabilities."
    )


def may_switch_to(run_as: str) -> str:
    """Say why this process may not run commands as ``run_as`` (TASKHUB_RUN_AS), or return "".

    A worker for which this says something must not start: it would fail
    every command. A user that does not exist is not its concern (each
    execution says so instead); it is another user all the same.
    """
    if not run_as:
        return ""
    user = lookup_user(run_as)
    if user is not None and user.pw_uid == os.geteuid():
        return ""
    problem = switch_problem()
    return f"TASKHUB_RUN_AS={run_as!r} asks for another user, but {problem}" if problem else ""


def _user_to_switch_to(run_as: str) -> tuple[pwd.struct_passwd | None, str]:
    """Return (the user to switch to, or None when no switch is needed; why it cannot be done, or "")."""
    if not run_as:
        return None, ""
    user = lookup_user(run_as)
    if user is None:
        return None, f"TASKHUB_RUN_AS user {run_as!r} does not exist."
    if user.pw_uid == os.geteuid():
        return None, ""
    problem = switch_problem()
    if problem:
        return None, f"TASKHUB_RUN_AS asks for user {user.pw_name!r}, but {problem}"
    return user, ""


def _private_dir(user: pwd.struct_passwd) -> str:
    """Make a directory in the worker's temp dir that only ``user`` may use (0700)."""
    path = tempfile.mkdtemp(prefix="taskhub-")
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


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


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group already gone is no error."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        # Only possible if the pgid was reused by another user's process,
        # which cannot happen while the leader is unreaped; ignore defensively.
        pass


def _mask(text: str, secrets: Collection[str]) -> str:
    """Replace each secret in ``text``, also as ``repr`` shows it, by MASK (longest first)."""
    forms = {form for value in secrets if value for form in (value, repr(value)[1:-1])}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, MASK)
    return text


def _not_started(spec: CommandSpec, error: str) -> RunResult:
    return RunResult(outcome="not_started", error=_mask(error, spec.secret_values))


def _start_error(spec: CommandSpec, cwd: str, exc: OSError, user: pwd.struct_passwd | None) -> str:
    program = spec.argv[0] if spec.argv else ""
    who = f" as user {user.pw_name!r}" if user else ""
    if getattr(exc, "filename", None) == cwd:
        # The child could not change into it (it does so before it switches
        # users, so as the worker's user): say why in words.
        return _check_cwd(cwd) or f"Cannot start: working directory {cwd!r}: {exc.strerror}."
    if isinstance(exc, FileNotFoundError):
        path = spec.env.get("PATH", "")
        searched = "the task's PATH" if path and path in spec.secret_values else f"PATH={path!r}"
        return f"Cannot start: command not found: {program!r} (searched {searched})."
    if isinstance(exc, PermissionError):
        return f"Cannot start: permission denied executing {program!r}{who} (is it executable?)."
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
    started = time.monotonic()
    if not spec.argv:
        return _not_started(spec, "Cannot start: the command is empty.")
    if spec.limits:
        problem = confine.start_problem(spec.limits)
        if problem:
            return _not_started(spec, f"Cannot start: {problem}")
    user, problem = _user_to_switch_to(spec.run_as)
    if problem:
        # Never fall back to the worker's own user: the command could read its secrets.
        return _not_started(spec, f"Cannot start: {problem}")
    private_dir = ""
    if user is not None:
        try:
            private_dir = _private_dir(user)
        except OSError as exc:
            return _not_started(spec, f"Cannot start: no private directory for user {user.pw_name!r}: {exc}.")
    scratch: list[str] = []  # directories made for this attempt, removed after it
    owner = (user.pw_uid, user.pw_gid) if user is not None else None
    try:
        artifacts_dir = ""
        try:
            if spec.resources and not spec.cwd and not private_dir:
                # Downloads need a directory of their own, not the shared temporary one.
                spec = replace(spec, cwd=workspace.make_dir("taskhub-work-"))
                scratch.append(spec.cwd)
            if spec.artifacts_limit:
                artifacts_dir = workspace.make_dir("taskhub-artifacts-", inside=private_dir, owner=owner)
                scratch.append(artifacts_dir)
                spec = replace(spec, env={**spec.env, "TASKHUB_ARTIFACTS_DIR": artifacts_dir})
        except OSError as exc:
            return _not_started(spec, f"Cannot start: no directory for the attempt: {exc}.")
        if spec.resources:
            fetched = _fetch(spec, hooks, user, private_dir)
            if fetched is not None:
                return fetched
            spec = replace(spec, timeout=max(spec.timeout - (time.monotonic() - started), 0.001))
        result = _run(spec, hooks, user, private_dir)
        if artifacts_dir:
            result.artifacts = workspace.collect(artifacts_dir, spec.artifacts_limit)
        return result
    finally:
        for directory in (*scratch, private_dir):
            if directory:
                # The command's group is gone by now; what it left there goes too.
                shutil.rmtree(directory, ignore_errors=True)


def _fetch(spec: CommandSpec, hooks: Hooks, user: pwd.struct_passwd | None, private_dir: str) -> RunResult | None:
    """Download the spec's resources under the attempt's deadline; None when all arrived, else the attempt's result."""
    fetch = replace(
        spec,
        argv=workspace.fetch_argv(list(spec.resources)),
        limits=confine.Limits(),
        resources=(),
        artifacts_limit=0,
    )
    result = _run(fetch, hooks, user, private_dir)
    if result.outcome == "succeeded":
        return None
    if result.outcome == "failed":
        said = [line for line in result.stderr.splitlines() if line.strip()]
        reason = said[-1] if said else result.error
        result.outcome = rules.PREPARE_FAILED
        result.error = _mask(f"Cannot start: downloading its resources failed. {reason}", spec.secret_values)
    result.exit_code = None  # the downloader's, not the command's: no exit-code rule may read it
    result.stdout = ""
    return result


def _run(spec: CommandSpec, hooks: Hooks, user: pwd.struct_passwd | None, private_dir: str) -> RunResult:
    cwd = spec.cwd or private_dir or tempfile.gettempdir()
    env = dict(spec.env)
    switch: dict[str, object] = {}
    if user is not None:
        env.setdefault("TMPDIR", private_dir)
        switch = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    argv = confine.wrap(spec.argv, spec.limits, cwd) if spec.limits else spec.argv
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
            **switch,
        )
    except OSError as exc:
        return _not_started(spec, _start_error(spec, cwd, exc, user))
    except (ValueError, TypeError) as exc:  # e.g. a NUL byte in argv or env
        return _not_started(spec, f"Cannot start: {exc}.")

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
        result.max_rss_kb = _peak_rss_kb(rusage.ru_maxrss, result.max_rss_kb)
        result.cpu_user = rusage.ru_utime
        result.cpu_system = rusage.ru_stime
        if os.WIFSIGNALED(wait_status):
            result.signal = os.WTERMSIG(wait_status)
        else:
            result.exit_code = os.WEXITSTATUS(wait_status)
        if status == OVER_LIMIT:
            result.outcome = "failed"  # the error, set when it was stopped, names the limit
        elif status is not None:
            result.outcome = status
        elif result.exit_code == 0:
            result.outcome = "succeeded"
        else:
            result.outcome = "failed"
            if result.signal is not None:
                result.error = f"The command was killed by signal {result.signal} ({_signame(result.signal)})."
            else:
                result.error = f"The command exited with code {result.exit_code}."
            if spec.limits:
                cpu = (result.cpu_user or 0) + (result.cpu_system or 0)
                explained = confine.explain_end(
                    spec.limits, signal_number=result.signal, cpu_seconds=cpu, stderr=err.text()[-4096:]
                )
                result.error = f"{explained} {result.error}" if explained else result.error
    finally:
        if not reaped:
            # The supervisor was interrupted (e.g. Celery's backstop time
            # limit): never leave the group behind.
            signal_group(pgid, signal.SIGKILL)
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


# -- the command's own memory figure ---------------------------------------------------------

# Below this many KiB over the worker's own peak, a figure may still be the
# worker's: the kernel's RSS counters are per-CPU and read approximately.
RSS_SLACK_KB = 1024


def _vm_hwm_kb(pid: int | str) -> int | None:
    """Return the peak resident memory (VmHWM, KiB) of a live process, or None (gone, or a zombie)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _peak_rss_kb(ru_maxrss: int, sampled: int | None) -> int | None:
    """Return the command's peak resident memory in KiB, or None when it cannot be told.

    The kernel charges a command's first process with the resident size of
    the process that forked it (this worker) at its exec, so ``ru_maxrss`` is
    at least the worker's size. Above the worker's own peak it is exactly
    the command's: the largest of its first process and the children that
    process waited for. Below it, the command's peak cannot be told from the
    worker's; what remains is the first process's own peak as sampled while
    it ran (at each heartbeat interval), or None for a command that ended
    before the first sample.
    """
    worker_peak = _vm_hwm_kb("self") or 0
    if ru_maxrss > worker_peak + RSS_SLACK_KB:
        return ru_maxrss
    return sampled


def _sample_peak(pid: int, result: RunResult) -> None:
    peak = _vm_hwm_kb(pid)
    if peak is not None and peak > (result.max_rss_kb or 0):
        result.max_rss_kb = peak


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


# _supervise stopped the command past one of its limits (result.error says which).
OVER_LIMIT = "over_limit"


def _supervise(
    proc: subprocess.Popen[bytes],
    spec: CommandSpec,
    hooks: Hooks,
    out: OutputBuffer,
    err: OutputBuffer,
    result: RunResult,
) -> str | None:
    """Pump output and enforce deadline and cancellation until the group is done.

    Return "timeout", "cancelled" or OVER_LIMIT when TaskHub stopped the command, else None.
    The leader is left unreaped (a zombie) so its pgid stays reserved. At
    each heartbeat interval the leader's peak memory so far goes into
    ``result.max_rss_kb`` (see _peak_rss_kb).
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
    polled = spec.limits.polled
    next_limit_check = start + confine.POLL_INTERVAL if polled else None
    stop_reason: str | None = None
    kill_at: float | None = None
    killed = False
    give_up_at: float | None = None  # after SIGKILL, stop waiting for pipes

    def terminate(now: float) -> None:
        nonlocal kill_at
        signal_group(pgid, signal.SIGTERM)
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
            if stop_reason is None and polled and not leader_done and now >= next_limit_check:
                next_limit_check = now + confine.POLL_INTERVAL
                over = confine.over_limit(spec.limits, pgid)
                if over:
                    # Memory or processes running away: no grace, the group goes at once.
                    stop_reason = OVER_LIMIT
                    result.error = over
                    kill_at = now
            if not killed and kill_at is not None and now >= kill_at:
                signal_group(pgid, signal.SIGKILL)
                killed = True
                give_up_at = now + DRAIN_AFTER_KILL
            if now >= next_heartbeat:
                if not leader_done:
                    _sample_peak(pgid, result)
                if hooks.on_heartbeat:
                    hooks.on_heartbeat(out, err)
                next_heartbeat = time.monotonic() + spec.heartbeat_interval

            if leader_done:
                if open_pipes == 0:
                    # Stragglers that let go of the output: stop them now.
                    if not killed:
                        signal_group(pgid, signal.SIGKILL)
                    break
                if kill_at is None:
                    # The command exited but left processes holding its output open.
                    terminate(now)
            if give_up_at is not None and now >= give_up_at:
                break

            wakeups = [next_heartbeat]
            if stop_reason is None:
                wakeups.append(deadline)
                if hooks.cancel_requested:
                    wakeups.append(next_cancel_check)
                if polled and not leader_done:
                    wakeups.append(next_limit_check)
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
