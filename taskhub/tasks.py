"""Celery interface to tasks: what beat calls."""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime

from celery import shared_task
from django.db import IntegrityError, transaction

from executions.models import TaskExecution, Trigger
from taskhub.limits import ActiveRunLimitReached
from taskhub.models import Task, TaskDisabled
from taskhub.services import launch

logger = logging.getLogger("taskhub")


# No result: the execution (or the log line saying why there is none) is the record,
# and a result row would be one more commit for every fire.
@shared_task(name="taskhub.launch_scheduled", ignore_result=True)
def launch_scheduled(task_id: int, fire_time: str | None = None, schedule_id: int | None = None) -> int | None:
    """Launch a task for one fire of its schedule; log why when it launches nothing (disabled, gone, launched, limit).

    ``fire_time`` (ISO 8601) is the time the fire was due, sent by TaskHub's
    beat scheduler with the schedule's ``schedule_id`` (its PeriodicTask);
    the database holds one first attempt per schedule and fire time, so a
    fire sent twice (two beats, a restart, an edit) launches once. Messages
    without them (older beats, a run from the beat admin) launch as before.
    """
    task = Task.objects.filter(pk=task_id).first()
    if task is None:
        logger.warning("Schedule fired for task %s, which no longer exists; nothing launched.", task_id)
        return None
    fired_at = datetime.fromisoformat(fire_time) if fire_time else None
    # Inside a caller's transaction, a savepoint keeps a duplicate's error from
    # aborting it; on its own (a worker) the INSERT commits by itself.
    guard = transaction.atomic() if transaction.get_connection().in_atomic_block else contextlib.nullcontext()
    try:
        with guard:
            execution = launch(
                task, trigger=Trigger.SCHEDULE, schedule_id=schedule_id if fired_at else None, fire_time=fired_at
            )
    except TaskDisabled:
        logger.info("Schedule fired for disabled task %r; skipped.", task.name)
        return None
    except ActiveRunLimitReached as exc:
        # Counted against the task's owner, who is at their limit: this fire is not launched.
        logger.warning("Schedule fired for task %r, not launched: %s", task.name, exc)
        return None
    except IntegrityError:
        if fired_at is None or not _launched(schedule_id, fired_at):
            raise
        logger.info("Fire %s of task %r (schedule %s) was launched already; nothing launched.",
                    fire_time, task.name, schedule_id)  # fmt: skip
        return None
    return execution.pk


def _launched(schedule_id: int | None, fire_time: datetime) -> bool:
    return TaskExecution.objects.filter(schedule_id=schedule_id, fire_time=fire_time, attempt=1).exists()
