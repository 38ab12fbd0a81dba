"""Launching: the one path by which every entry point starts a task."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.utils.timezone import now

from executions import messaging
from executions.models import TaskExecution, Trigger
from taskhub.models import Task, TaskDisabled


def launch(
    task: Task,
    *,
    trigger: str = Trigger.MANUAL,
    user: AbstractBaseUser | None = None,
    scheduled_for: datetime | None = None,
) -> TaskExecution:
    """Create the first attempt of a new run and send it once the transaction commits.

    Raise TaskDisabled for a disabled task, ValueError when its command line
    does not split. The run records what it runs (a snapshot of the task):
    a later edit of the task does not change it.
    """
    if not task.enabled:
        raise TaskDisabled(f"Task “{task.name}” is disabled; enable it before running it.")
    at = now()
    due = scheduled_for or at
    will_send = (due - at).total_seconds() <= settings.TASKHUB_MAX_ETA
    # One INSERT, no transaction block of its own: outside a transaction it
    # commits at once (one round trip instead of BEGIN/INSERT/COMMIT) and the
    # message goes out right after; inside a caller's transaction, on_commit
    # still holds the message until that commits.
    execution = TaskExecution.create_pending(
        task,
        run_id=uuid.uuid4(),
        attempt=1,
        trigger=trigger,
        triggered_by_id=user.pk if user is not None and user.is_authenticated else None,
        scheduled_for=due,
        enqueued=will_send,
        at=at,
        snapshot=TaskExecution.snapshot_of(task),
        celery_task_id=str(uuid.uuid4()),
    )
    if will_send:
        messaging.send_on_commit(execution)
    return execution
