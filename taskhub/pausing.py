"""Pausing a task's schedules, with the reason the task page shows."""

from __future__ import annotations

from django_celery_beat.models import PeriodicTask, PeriodicTasks

from taskhub.models import Task
from taskhub.schedules import sync_enabled

LAUNCH_SCHEDULED = "taskhub.launch_scheduled"


def pause_schedules(task: Task, reason: str) -> int:
    """Disable every schedule of ``task`` and record ``reason`` on it; return how many schedules were disabled.

    A schedule of a task is a django-celery-beat PeriodicTask for
    taskhub.launch_scheduled whose kwargs are {"task_id": <id>}. The task
    itself stays enabled: it can still be run by hand.
    """
    Task.objects.filter(pk=task.pk).update(paused_reason=reason)
    task.paused_reason = reason
    # The task's own schedules (taskhub.Schedule) follow paused_reason as the schedules module keeps them.
    disabled = sync_enabled([task.pk])
    # Beat rows made by hand for the task: kwargs is JSON text; the pattern allows any spacing around the one key.
    disabled += PeriodicTask.objects.filter(
        task=LAUNCH_SCHEDULED, enabled=True, kwargs__regex=rf'^\s*\{{\s*"task_id"\s*:\s*{int(task.pk)}\s*\}}\s*$'
    ).update(enabled=False)
    if disabled:
        # update() sends no signal: tell beat that its schedule changed.
        PeriodicTasks.update_changed()
    return disabled
