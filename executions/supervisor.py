"""Shared supervision for executions run by threads of one worker process (``--pool threads``).

A prefork pool process runs one execution at a time and checks its row
itself: one cancel check a second and one heartbeat write per tick, on the
process's own database connection. A threads-pool worker may run hundreds of
long commands at once; done the same way that would be a connection per
thread (PostgreSQL refuses past ``max_connections``) and hundreds of queries
a second. Here instead:

- one supervisor thread per process checks every execution running in the
  process for cancellation in one query per ``TASKHUB_CANCEL_POLL`` and
  writes their heartbeats in one UPDATE per ``TASKHUB_HEARTBEAT`` (plus one
  per execution whose output changed), and wakes a command's runner through
  its eventfd when its row says stop;
- an execution's thread holds a database connection only while it claims,
  loads and records its row, and at most ``TASKHUB_THREAD_DB_CONNECTIONS``
  threads do so at once; between those moments it closes its connection.

Deadlines and kill grace stay with each runner (timers in its own thread),
so they are as exact as in a prefork process.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Protocol

from celery.signals import task_postrun, task_prerun
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Case, F, Value, When
from django.utils.timezone import now

from executions.db import drop_connection
from executions.models import Status, TaskExecution

logger = logging.getLogger("executions")

# Ids per query: keeps statements and their parameter lists small.
CHUNK = 500


def shared_mode() -> bool:
    """Say whether executions here run in threads of one process (the threads pool)."""
    return threading.current_thread() is not threading.main_thread()


class Supervised(Protocol):
    execution_id: int
    pid: int | None
    registered_at: float
    pid_saved: bool

    def take_output(self) -> dict[str, object] | None: ...

    def stop(self) -> None: ...


class Supervisor:
    """One thread that checks and heartbeats every execution registered in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, Supervised] = {}
        self._thread: threading.Thread | None = None
        self._owner_pid: int | None = None
        self._wake = threading.Event()

    def register(self, entry: Supervised) -> None:
        with self._lock:
            self._entries[entry.execution_id] = entry
            if self._thread is None or self._owner_pid != os.getpid() or not self._thread.is_alive():
                self._owner_pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="taskhub-supervisor", daemon=True)
                self._thread.start()

    def unregister(self, entry: Supervised) -> None:
        with self._lock:
            if self._entries.get(entry.execution_id) is entry:
                del self._entries[entry.execution_id]

    def snapshot(self) -> list[Supervised]:
        with self._lock:
            return list(self._entries.values())

    # -- the loop ------------------------------------------------------------------

    def _run(self) -> None:
        next_cancel = next_heartbeat = time.monotonic()
        while True:
            at = time.monotonic()
            if at >= next_cancel:
                next_cancel = at + settings.TASKHUB_CANCEL_POLL
                self._guarded("cancel check", self.check_cancellations)
            if at >= next_heartbeat:
                next_heartbeat = at + settings.TASKHUB_HEARTBEAT
                self._guarded("heartbeat", self.write_heartbeats)
            time.sleep(max(0.0, min(next_cancel, next_heartbeat) - time.monotonic()))

    def _guarded(self, what: str, fn) -> None:
        try:
            fn()
        except DatabaseError as exc:
            # The commands go on; the next tick tries again on a fresh connection.
            logger.warning("Shared %s failed: %s", what, exc)
            drop_connection()
        except Exception:
            logger.exception("Shared %s failed.", what)

    def check_cancellations(self) -> None:
        """Stop every registered execution whose row asks for it, in one query per CHUNK rows."""
        entries = {e.execution_id: e for e in self.snapshot()}
        ids = list(entries)
        for i in range(0, len(ids), CHUNK):
            chunk = ids[i : i + CHUNK]
            rows = dict(
                (pk, (status, cancel_at))
                for pk, status, cancel_at in TaskExecution.objects.filter(pk__in=chunk).values_list(
                    "pk", "status", "cancel_requested_at"
                )
            )
            for pk in chunk:
                row = rows.get(pk)
                # A deleted row, a cancel request, or a row no longer running
                # (taken over, e.g. marked lost by the reaper): stop the command.
                if row is None or row[1] is not None or row[0] != Status.RUNNING:
                    entries[pk].stop()

    def write_heartbeats(self) -> None:
        """Save heartbeat_at (and pid, and changed output) of executions running for a tick or more."""
        cutoff = time.monotonic() - settings.TASKHUB_HEARTBEAT
        due = [e for e in self.snapshot() if e.registered_at <= cutoff]
        if not due:
            return
        at = now()
        for i in range(0, len(due), CHUNK):
            chunk = due[i : i + CHUNK]
            new_pids = [When(pk=e.execution_id, then=Value(e.pid)) for e in chunk if not e.pid_saved]
            fields: dict[str, object] = {"heartbeat_at": at}
            if new_pids:
                fields["pid"] = Case(*new_pids, default=F("pid"))
            TaskExecution.objects.filter(pk__in=[e.execution_id for e in chunk], status=Status.RUNNING).update(**fields)
            for e in chunk:
                e.pid_saved = True
        for e in due:
            output = e.take_output()
            if output is not None:
                TaskExecution.objects.row_if(e.execution_id, Status.RUNNING).update(**output)


supervisor = Supervisor()


# -- database connections of threads-pool executions ------------------------------------


class _Slots:
    """Bound the threads of this process that hold a database connection at once."""

    def __init__(self) -> None:
        self._sem: threading.BoundedSemaphore | None = None
        self._init_lock = threading.Lock()
        self._local = threading.local()

    def _semaphore(self) -> threading.BoundedSemaphore:
        if self._sem is None:
            with self._init_lock:
                if self._sem is None:
                    self._sem = threading.BoundedSemaphore(settings.TASKHUB_THREAD_DB_CONNECTIONS)
        return self._sem

    def acquire(self) -> None:
        if not getattr(self._local, "held", False):
            self._semaphore().acquire()
            self._local.held = True

    def release(self) -> None:
        """Close this thread's connection and give its slot to another thread."""
        try:
            connection.close()
        except DatabaseError:
            pass
        if getattr(self._local, "held", False):
            self._local.held = False
            self._semaphore().release()


slots = _Slots()


@task_prerun.connect
def _take_a_slot(**kwargs: object) -> None:
    if shared_mode():
        slots.acquire()


@task_postrun.connect
def _give_back_the_slot(**kwargs: object) -> None:
    if shared_mode():
        slots.release()
