"""Limits on what a command may use, and optional isolation; no Django here (the runner uses it).

- CPU seconds and open files are kernel resource limits (RLIMIT_CPU,
  RLIMIT_NOFILE), set by util-linux's ``prlimit`` before it executes the
  command, so every process the command starts inherits them. They apply to
  each process: the kernel stops a process past its CPU seconds with SIGXCPU
  (SIGKILL a second later), and refuses it a file past its open files.
- Memory and processes are for the whole process group: the runner adds up
  the group's resident memory and counts its processes every
  ``POLL_INTERVAL`` and stops the group (SIGKILL) past either limit.
  RLIMIT_NPROC counts all processes of a user and root ignores it, and
  RLIMIT_AS counts address space rather than memory, so neither fits; cgroups
  are not offered to the worker on every host.
- ``isolate`` runs the command inside bubblewrap: no network, the whole file
  system read-only except its working directory, a private /tmp. A host
  without ``bwrap`` refuses to start it, with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass

POLL_INTERVAL = 0.2
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
# What a process's own error says when it was refused a file past RLIMIT_NOFILE (EMFILE).
EMFILE_TEXT = os.strerror(24)


@dataclass(frozen=True)
class Limits:
    memory_mb: int | None = None
    cpu_seconds: int | None = None
    open_files: int | None = None
    processes: int | None = None
    isolate: bool = False

    @property
    def polled(self) -> bool:
        return bool(self.memory_mb or self.processes)

    def __bool__(self) -> bool:
        return bool(self.memory_mb or self.cpu_seconds or self.open_files or self.processes or self.isolate)


def start_problem(limits: Limits) -> str:
    """Why a command with these limits cannot start on this host, or ""."""
    if (limits.cpu_seconds or limits.open_files) and shutil.which("prlimit") is None:
        return "the task sets CPU or open-files limits, which need util-linux's prlimit; this host has none."
    if limits.isolate and shutil.which("bwrap") is None:
        return (
            "the task asks to run isolated, which needs bubblewrap (bwrap); this worker host does not have it. "
            "Install bubblewrap there, or turn off the task's isolation."
        )
    return ""


def wrap(argv: list[str], limits: Limits, cwd: str) -> list[str]:
    """The argument vector that runs ``argv`` under ``limits``: prlimit, then bwrap, then the command."""
    prefix: list[str] = []
    if limits.cpu_seconds or limits.open_files:
        prefix += ["prlimit"]
        if limits.cpu_seconds:
            # SIGXCPU at the limit; SIGKILL one second later should the process catch it.
            prefix += [f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds + 1}"]
        if limits.open_files:
            prefix += [f"--nofile={limits.open_files}"]
        prefix += ["--"]
    if limits.isolate:
        prefix += ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        if cwd and os.path.realpath(cwd) != "/tmp":
            prefix += ["--bind", cwd, cwd]
        prefix += ["--unshare-net", "--die-with-parent", "--chdir", cwd or "/tmp", "--"]
    return prefix + argv


def live_processes() -> Iterator[tuple[int, int, int]]:
    """(pid, process group, resident pages) of every live process, zombies left out (Linux /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        # After the name: state, ppid, pgrp, ...; rss is the 22nd field after it.
        if fields[0] != b"Z":
            yield int(entry), int(fields[2]), int(fields[21])


def group_usage(pgid: int) -> tuple[int, int]:
    """The number of live processes in group ``pgid`` and their resident memory together, KiB."""
    pages = [rss for _, group, rss in live_processes() if group == pgid]
    return len(pages), sum(pages) * PAGE_KB


def over_limit(limits: Limits, pgid: int) -> str:
    """The message naming the limit the group is over, or ""."""
    count, rss_kb = group_usage(pgid)
    if limits.memory_mb and rss_kb > limits.memory_mb * 1024:
        return (
            f"Stopped: the command used more than its memory limit ({limits.memory_mb} MiB): "
            f"{rss_kb // 1024} MiB resident across {count} process{'es' if count != 1 else ''}."
        )
    if limits.processes and count > limits.processes:
        return f"Stopped: the command ran more processes than its process limit ({limits.processes}): {count} at once."
    return ""


def explain_end(limits: Limits, *, signal_number: int | None, cpu_seconds: float, stderr: str) -> str:
    """The message naming the kernel limit that ended (or failed) the command, or ""."""
    if limits.cpu_seconds and (
        signal_number == signal.SIGXCPU or (signal_number == signal.SIGKILL and cpu_seconds >= limits.cpu_seconds)
    ):
        return f"Stopped by the kernel: a process of the command used its CPU time limit ({limits.cpu_seconds} s)."
    if limits.open_files and EMFILE_TEXT in stderr:
        return (
            f"The command reported “{EMFILE_TEXT}”: it reached its open files limit ({limits.open_files}) per process."
        )
    return ""
