"""Concurrency per task: at most ``max_concurrency`` executions of a task run at once, on all workers.

Enforced at the claim, where an execution starts: a task with a limit is
claimed in a transaction that locks the task's row (SELECT … FOR UPDATE on
PostgreSQL; SQLite's IMMEDIATE transactions serialise writers anyway) and
counts its running executions first, so two workers claiming at the same
moment cannot both take the last slot. A task without a limit never comes
here: its claim statement takes it in one step (statements.CLAIM_AND_LOAD).

When a launch finds the task at its limit, the overlap policy says what
happens:
- ``queue``: the execution stays pending and waits its turn. The end of a
  running attempt sends the oldest due waiting one again (``wake_next``),
  once, after its outcome commits: no polling loop, no message storm. (The
  reconciler also sends a waiting row again after TASKHUB_REQUEUE_AFTER when
  its queue is empty: a safety net should that message be lost.)
- ``skip``: the launch records a ``skipped`` execution with the reason in
  ``error``; for the caller it is not an error.
- ``replace``: the oldest running executions are asked to stop (the same
  request as a cancel), and the new one waits, as ``queue``, for the slot
  they free.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import transaction
from django.utils.timezone import now

from executions import messaging
from executions.models import Status, TaskExecution
from taskhub.models import OverlapPolicy, Task

logger = logging.getLogger("executions")


def running_count(task_id: int) -> int:
    # Served by execution_active_due_idx (status, scheduled_for): only pending and running rows are in it.
    return TaskExecution.objects.filter(task_id=task_id, status=Status.RUNNING).count()


def skip_reason(task: Task, running: int) -> str:
    return (
        f"Skipped: task “{task.name}” already had {running} execution{'s' if running != 1 else ''} running, "
        f"its max_concurrency ({task.max_concurrency}), and its overlap_policy is skip."
    )


def replace_running(task: Task, running: int, *, at: datetime) -> int:
    """Ask the oldest running executions of ``task`` to stop, enough to free one slot; return how many."""
    excess = running - task.max_concurrency + 1
    if excess <= 0:
        return 0
    oldest = TaskExecution.objects.filter(task_id=task.pk, status=Status.RUNNING, cancel_requested_at__isnull=True)
    ids = list(oldest.order_by("started_at", "id").values_list("pk", flat=True)[:excess])
    asked = TaskExecution.objects.filter(pk__in=ids, status=Status.RUNNING).update(cancel_requested_at=at)
    if asked:
        logger.info(
            "Task %r: asked %s running execution(s) to stop for a new one (overlap_policy replace).", task.name, asked
        )
    return asked


def at_launch(task: Task, *, at: datetime) -> str | None:
    """Apply the overlap policy of a launch of a limited task; return the reason when the launch is skipped.

    One statement (the count) when the task has room; the claim enforces
    the limit in any case, this only decides early what the policy does.
    """
    running = running_count(task.pk)
    if running < task.max_concurrency:
        return None
    if task.overlap_policy == OverlapPolicy.SKIP:
        return skip_reason(task, running)
    if task.overlap_policy == OverlapPolicy.REPLACE:
        replace_running(task, running, at=at)
    return None


def claim_limited(row: TaskExecution, *, worker: str, celery_task_id: str, due_by: datetime) -> TaskExecution | None:
    """Claim ``row`` (pending, due, of a task with a limit) if its task has a free slot; otherwise apply the policy.

    Return the claimed execution, or None when it waits (queue, replace) or
    was skipped (skip).
    """
    at = now()
    with transaction.atomic():
        # The lock serialises the claims of this task's executions until COMMIT.
        task = Task.objects.select_for_update().filter(pk=row.task_id).first()
        if task is None:
            return None
        running = running_count(task.pk) if task.max_concurrency else 0
        if not task.max_concurrency or running < task.max_concurrency:
            return TaskExecution.claim(
                row.pk, worker=worker, celery_task_id=celery_task_id, due_by=due_by, limited=True
            )
        # The policy is about new runs: a later attempt of a run under way waits its turn.
        policy = task.overlap_policy if row.attempt == 1 else OverlapPolicy.QUEUE
        if policy == OverlapPolicy.SKIP:
            row.task = task
            row.transition(
                Status.SKIPPED,
                finished_at=at,
                error=skip_reason(task, running),
                decided_by="overlap_policy skip: the task was at its max_concurrency when this execution was due",
            )
            return None
        if policy == OverlapPolicy.REPLACE:
            replace_running(task, running, at=at)
        # Waits its turn: the end of a running attempt sends it again.
        TaskExecution.objects.row_if(row.pk, Status.PENDING).update(enqueued_at=at)
    logger.info(
        "Execution %s waits: task %r has %s of %s allowed running.", row.pk, task.name, running, task.max_concurrency
    )
    return None


def wake_next(task: Task) -> bool:
    """Send again the oldest due pending execution of ``task``, now that a slot is free; return True if one was sent."""
    at = now()
    waiting = (
        TaskExecution.objects.filter(task_id=task.pk, status=Status.PENDING, scheduled_for__lte=at)
        .order_by("scheduled_for", "id")
        .only("pk", "task_id", "scheduled_for", "celery_task_id")
        .first()
    )
    if waiting is None:
        return False
    waiting.task = task
    return messaging.send(waiting, at=at)
