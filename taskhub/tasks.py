"""Celery interface to tasks: what beat calls."""

from __future__ import annotations

import logging

from celery import shared_task

from executions.models import Trigger
from taskhub.models import Task, TaskDisabled
from taskhub.services import launch

logger = logging.getLogger("taskhub")


@shared_task(name="taskhub.launch_scheduled", ignore_result=False)
def launch_scheduled(task_id: int) -> int | None:
    """Launch a task for its schedule; skip it (and say so) when disabled or gone."""
    task = Task.objects.filter(pk=task_id).first()
    if task is None:
        logger.warning("Schedule fired for task %s, which no longer exists; nothing launched.", task_id)
        return None
    try:
        execution = launch(task, trigger=Trigger.SCHEDULE)
    except TaskDisabled:
        logger.info("Schedule fired for disabled task %r; skipped.", task.name)
        return None
    return execution.pk
