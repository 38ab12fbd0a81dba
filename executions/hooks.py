"""The runner's callbacks that keep an execution's row up to date, one class per pool strategy.

- ``DirectHooks``: a prefork (or solo) pool process runs one execution at a
  time and reads and writes its row itself.
- ``SupervisedHooks``: a threads-pool process runs many; its one supervisor
  (executions/supervisor.py) checks and heartbeats all of them in batches, and
  these callbacks only exchange state with it in memory.

Both also say stop once the worker's warm shutdown has outlasted its grace;
``stopped_for_shutdown`` then tells the caller to hand the attempt back.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from django.db import DatabaseError, connection
from django.utils.timezone import now

from executions import shutdown, supervisor
from executions.db import check_pool
from executions.models import Status, TaskExecution
from executions.runner import Hooks, OutputBuffer

logger = logging.getLogger("executions")


def _ensure_usable_connection() -> None:
    # After a failed query the connection may be dead (database restart):
    # drop it so the next query reconnects.
    if connection.connection is not None and connection.errors_occurred:
        connection.close_if_unusable_or_obsolete()
        check_pool()


class ExecutionHooks(Hooks):
    """What both strategies share: the shutdown check on top of the row's own stop request."""

    def __init__(self, execution: TaskExecution) -> None:
        super().__init__(on_start=self.started, on_heartbeat=self.heartbeat, cancel_requested=self.should_stop)
        self.execution_id = execution.pk
        self.pid: int | None = None
        self.saved_bytes = (-1, -1)
        self.stopped_for_shutdown = False

    def should_stop(self) -> bool:
        # An operator's cancel (or a row taken over by the reaper) wins over a
        # hand-back: neither must lead to a new attempt.
        if self.row_says_stop():
            return True
        if shutdown.grace_expired():
            self.stopped_for_shutdown = True
            return True
        return False

    def started(self, pid: int) -> None:
        self.pid = pid

    def heartbeat(self, out: OutputBuffer, err: OutputBuffer) -> None:
        raise NotImplementedError

    def row_says_stop(self) -> bool:
        raise NotImplementedError


class DirectHooks(ExecutionHooks):
    """Prefork or solo pool: this process queries and writes the row itself."""

    def heartbeat(self, out: OutputBuffer, err: OutputBuffer) -> None:
        fields: dict[str, object] = {"heartbeat_at": now(), "pid": self.pid}
        if (out.total, err.total) != self.saved_bytes:
            fields.update(stdout=out.text(), stderr=err.text(), output_truncated=out.truncated or err.truncated)
        try:
            TaskExecution.objects.row_if(self.execution_id, Status.RUNNING).update(**fields)
            self.saved_bytes = (out.total, err.total)
        except DatabaseError as exc:
            # The command goes on; the next tick tries again.
            logger.warning("Heartbeat of execution %s not saved: %s", self.execution_id, exc)
            _ensure_usable_connection()

    def row_says_stop(self) -> bool:
        try:
            row = (
                TaskExecution.objects.filter(pk=self.execution_id).values_list("status", "cancel_requested_at").first()
            )
        except DatabaseError as exc:
            logger.warning("Cancel check of execution %s failed: %s", self.execution_id, exc)
            _ensure_usable_connection()
            return False
        if row is None:
            return True  # the row was deleted: nobody wants this run any more
        status, cancel_requested_at = row
        # A row that is no longer running was taken over (e.g. marked lost by
        # the reaper after a long outage): stop, so the command does not run twice.
        return cancel_requested_at is not None or status != Status.RUNNING


class SupervisedHooks(ExecutionHooks):
    """Threads pool: the process's supervisor does the queries; see executions/supervisor.py."""

    def __init__(self, execution: TaskExecution) -> None:
        super().__init__(execution)
        self.on_exit = self.exited
        # What the supervisor reads and sets.
        self.registered_at = 0.0
        self.pid_saved = False
        self.stop_requested = False
        self._output: dict[str, object] | None = None
        self._fd_lock = threading.Lock()

    def started(self, pid: int) -> None:
        self.pid = pid
        # The supervisor wakes the runner through it when the row says stop.
        self.wakeup_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.registered_at = time.monotonic()
        supervisor.supervisor.register(self)
        # The command may run for hours: hand the connection back meanwhile.
        supervisor.slots.release()

    def exited(self) -> None:
        supervisor.supervisor.unregister(self)
        with self._fd_lock:  # stop() may be writing to it from the supervisor's thread
            if self.wakeup_fd is not None:
                os.close(self.wakeup_fd)
                self.wakeup_fd = None
        supervisor.slots.acquire()  # for recording the outcome

    def heartbeat(self, out: OutputBuffer, err: OutputBuffer) -> None:
        # Decode here, in the runner's thread; the supervisor writes it on its next tick.
        if (out.total, err.total) != self.saved_bytes:
            self.saved_bytes = (out.total, err.total)
            self._output = {
                "stdout": out.text(),
                "stderr": err.text(),
                "output_truncated": out.truncated or err.truncated,
            }

    def take_output(self) -> dict[str, object] | None:
        output, self._output = self._output, None
        return output

    def stop(self) -> None:
        """Called by the supervisor's thread: the row says stop."""
        self.stop_requested = True
        with self._fd_lock:
            if self.wakeup_fd is not None:
                os.eventfd_write(self.wakeup_fd, 1)

    def row_says_stop(self) -> bool:
        return self.stop_requested


def hooks_for(execution: TaskExecution) -> ExecutionHooks:
    """The hooks for the pool this execution runs in."""
    return SupervisedHooks(execution) if supervisor.shared_mode() else DirectHooks(execution)
