"""Launching: the one path by which every entry point starts a task."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils.timezone import now

from executions import concurrency, messaging
from executions.models import Status, TaskExecution, Trigger, WorkflowRun
from taskhub import limits
from taskhub.models import OverlapPolicy, Task, TaskDisabled


def launch(
    task: Task,
    *,
    trigger: str = Trigger.MANUAL,
    user: AbstractBaseUser | None = None,
    scheduled_for: datetime | None = None,
    overrides: dict | None = None,
    schedule_id: int | None = None,
    fire_time: datetime | None = None,
    workflow_run_id: uuid.UUID | None = None,
    upstream_execution_id: int | None = None,
) -> TaskExecution:
    """Create the first attempt of a new run and send it once the transaction commits.

    Raise TaskDisabled for a disabled task, ValueError when its command line
    does not split. The run records what it runs (a snapshot of the task):
    a later edit of the task does not change it. ``overrides`` replaces parts
    of that snapshot for this run only (a one-off ``env`` or ``timeout``).

    Raise limits.ActiveRunLimitReached, creating nothing, when the launch
    would take the user it counts against (``user``, else the task's owner)
    over their limit of active runs. A task at its ``max_concurrency`` whose
    overlap policy is skip gets a ``skipped`` execution, returned as any
    other; ``replace`` asks its running executions to stop first
    (executions.concurrency). ``schedule_id`` and ``fire_time``: the
    schedule's fire this run is for (unique together: IntegrityError when
    that fire was launched already). ``workflow_run_id`` and
    ``upstream_execution_id``: a launch by an upstream run's end
    (executions.workflows); a root launch of a task with downstream tasks
    starts a workflow run of its own.
    """
    if not task.enabled:
        raise TaskDisabled(f"Task “{task.name}” is disabled; enable it before running it.")
    limits.check(task, user)
    at = now()
    triggered_by_id = user.pk if user is not None and user.is_authenticated else None
    if task.max_concurrency and task.overlap_policy != OverlapPolicy.QUEUE:
        # queue needs nothing here: the claim makes the execution wait its turn.
        reason = concurrency.at_launch(task, at=at)
        if reason is not None:
            return _skipped(
                task,
                reason,
                trigger=trigger,
                triggered_by_id=triggered_by_id,
                at=at,
                snapshot=_snapshot(task, overrides),
                schedule_id=schedule_id,
                fire_time=fire_time,
                workflow_run_id=workflow_run_id,
                upstream_execution_id=upstream_execution_id,
            )
    due = scheduled_for or at
    will_send = (due - at).total_seconds() <= settings.TASKHUB_MAX_ETA
    # One INSERT, no transaction block of its own: outside a transaction it
    # commits at once (one round trip instead of BEGIN/INSERT/COMMIT) and the
    # message goes out right after; inside a caller's transaction, on_commit
    # still holds the message until that commits.
    run_id = uuid.uuid4()
    row = {
        "task": task,
        "run_id": run_id,
        "attempt": 1,
        "trigger": trigger,
        "triggered_by_id": triggered_by_id,
        "scheduled_for": due,
        "enqueued": will_send,
        "at": at,
        "snapshot": _snapshot(task, overrides),
        "celery_task_id": str(uuid.uuid4()),
        "schedule_id": schedule_id,
        "fire_time": fire_time,
        "workflow_run_id": workflow_run_id,
        "upstream_execution_id": upstream_execution_id,
    }
    if workflow_run_id is None and task.has_downstream:
        # The root launch of a task graph: its run's id names the workflow run.
        with transaction.atomic():
            WorkflowRun.objects.create(id=run_id, root_task=task, created_at=at)
            execution = TaskExecution.create_pending(**{**row, "workflow_run_id": run_id})
    else:
        execution = TaskExecution.create_pending(**row)
    if will_send:
        messaging.send_on_commit(execution)
    return execution


# What a launch may change for one run; everything else runs as the task says.
OVERRIDABLE = frozenset({"env", "timeout"})


def _snapshot(task: Task, overrides: dict | None) -> dict[str, object]:
    snapshot = TaskExecution.snapshot_of(task)
    if overrides:
        unknown = set(overrides) - OVERRIDABLE
        if unknown:
            raise ValueError(
                f"Only {', '.join(sorted(OVERRIDABLE))} can be overridden for one run, not {', '.join(sorted(unknown))}."
            )
        snapshot.update(overrides)
    return snapshot


def _skipped(
    task: Task,
    reason: str,
    *,
    trigger: str,
    triggered_by_id: int | None,
    at: datetime,
    snapshot: dict[str, object],
    schedule_id: int | None = None,
    fire_time: datetime | None = None,
    workflow_run_id: uuid.UUID | None = None,
    upstream_execution_id: int | None = None,
    decided_by: str = "overlap_policy skip: the task was at its max_concurrency",
) -> TaskExecution:
    """Record a launch that did not start: a finished execution that says why."""
    return TaskExecution.objects.create(
        task=task,
        run_id=uuid.uuid4(),
        attempt=1,
        status=Status.SKIPPED,
        trigger=trigger,
        triggered_by_id=triggered_by_id,
        scheduled_for=at,
        finished_at=at,
        created_at=at,
        error=reason,
        decided_by=decided_by,
        schedule_id=schedule_id,
        fire_time=fire_time,
        workflow_run_id=workflow_run_id,
        upstream_execution_id=upstream_execution_id,
        **snapshot,
    )


def record_not_launched(
    task: Task, reason: str, *, trigger: str, workflow_run_id: uuid.UUID, upstream_execution_id: int
) -> TaskExecution:
    """Record, in its workflow run, a downstream launch that was refused (task disabled, a limit): skipped, with why."""
    return _skipped(
        task,
        reason,
        trigger=trigger,
        triggered_by_id=None,
        at=now(),
        snapshot=TaskExecution.snapshot_of(task),
        workflow_run_id=workflow_run_id,
        upstream_execution_id=upstream_execution_id,
        decided_by="not launched by its upstream run",
    )
