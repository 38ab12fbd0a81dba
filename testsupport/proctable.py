"""The process table (Linux /proc): which processes a command left, and in which group."""

from __future__ import annotations

from executions.confine import live_processes
from executions.runner import process_has_env


def group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes in process group ``pgid``."""
    return [pid for pid, group, _ in live_processes() if group == pgid]


def processes_with_env(name: str, value: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose environment holds ``name=value``."""
    return [pid for pid, _, _ in live_processes() if process_has_env(pid, name, value)]


def processes_of_execution(execution_id: int) -> list[int]:
    """PIDs of live processes started for an execution (found by TASKHUB_EXECUTION_ID in their environment)."""
    return processes_with_env("TASKHUB_EXECUTION_ID", str(execution_id))


def processes_of_task(name: str) -> list[int]:
    """PIDs of live processes started for any execution of the task ``name`` (by TASKHUB_TASK)."""
    return processes_with_env("TASKHUB_TASK", name)


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def descends_from(pid: int, ancestors: set[int]) -> bool:
    """Return True if a process in ``ancestors`` is an ancestor of ``pid`` (or the process is gone)."""
    try:
        while pid > 1:
            pid = parent_of(pid)
            if pid in ancestors:
                return True
    except OSError:
        return True  # it ended meanwhile: not left behind
    return False
