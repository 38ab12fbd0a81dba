"""Waiting for another task: a launch of a task with ``wait_for_task`` runs once that task's latest run is in the state it names.

Checked when the launch's message arrives and it is due (only its first
attempt waits: the run's retries do not wait again). Not met yet: the row is
made due again TASKHUB_WATCH_POLL seconds later and its message sent for
then. Not met within ``wait_timeout`` of the launch: the execution fails,
not retried, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings

from executions import console, messaging
from executions.models import RETRYABLE, TERMINAL, Status, TaskExecution
from taskhub.models import Task, WaitState

# Which statuses of the watched task's latest attempt meet each wanted state.
MEETS: dict[str, frozenset[str]] = {
    WaitState.SUCCEEDED: frozenset({Status.SUCCEEDED}),
    WaitState.FAILED: RETRYABLE,
    WaitState.FINISHED: TERMINAL,
}


@dataclass(frozen=True)
class Verdict:
    ready: bool
    failure: str = ""  # set when the wait is over without the state: why the execution fails


def verdict(row: TaskExecution, *, at: datetime) -> Verdict:
    """Whether ``row`` may run now, must wait on, or has waited too long."""
    task = row.task
    if task.wait_for_task_id is None or row.attempt > 1:
        return Verdict(ready=True)
    latest = (
        TaskExecution.objects.filter(task_id=task.wait_for_task_id).order_by("-id").values_list("status", flat=True)
    ).first()
    if latest in MEETS[task.wait_for_status]:
        return Verdict(ready=True)
    if (at - row.created_at).total_seconds() < task.wait_timeout:
        return Verdict(ready=False)
    name = Task.objects.filter(pk=task.wait_for_task_id).values_list("name", flat=True).first()
    state = WaitState(task.wait_for_status).label
    now_is = f"its latest run is {latest}" if latest else "it has not run yet"
    return Verdict(
        ready=False,
        failure=f"Waited {console.seconds_words(task.wait_timeout)} (wait_timeout) for task “{name}” to show a "
        f"latest run that {state}; {now_is}. The command was not run.",
    )


def wait_again(row: TaskExecution, *, at: datetime) -> None:
    """Make ``row`` due again after TASKHUB_WATCH_POLL and send its message for then."""
    messaging.send_again_in(row, settings.TASKHUB_WATCH_POLL, at=at)
